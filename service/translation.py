"""Translation as the API offers it: language pairs (direct, or through English), detection of
the source, sentence segmentation of long texts and their reassembly. Routes call this; this
calls the scheduler; the engines see sentences only."""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from bs4 import BeautifulSoup

from service import protect
from service.errors import ServiceError, bad_request, too_large
from service.html import Offload, translate_html
from service.languages import translation_code
from service.runtime.translator import ALIGN_SEP
from service.scheduling import run_batched
from service.schemas import DetectedLanguage
from service.state import ServiceState
from service.text import Segment, join_segments, split_text


def supported(state: ServiceState) -> str:
    pairs = sorted(state.registry.pairs) if state.registry else []
    return ", ".join(f"{s}->{t}" for s, t in pairs) or "none"


async def detect(state: ServiceState, texts: list[str]) -> list[list[DetectedLanguage]]:
    """Each text's languages among those the service translates from, most likely first,
    confidence 0-100. The language-identification model knows many more (`/classify` with
    model=langid gives them all); its labels for scripts of one language (zh-Hans, zh-Hant)
    count for that language."""
    langid = state.settings.langid_model
    registry = state.registry
    if registry is None or langid not in registry.classifiers():
        raise ServiceError(501, "language detection is not available (no langid model loaded)")
    labels = registry.classifiers()[langid].labels
    sources = {s for s, _ in registry.pairs}
    probs = await run_batched(state, langid, texts)
    out = []
    for p in probs:
        scores: dict[str, float] = {}
        for k, label in enumerate(labels):
            code = translation_code(label)
            if code in sources:
                scores[code] = scores.get(code, 0.0) + float(p[k])
        order = sorted(scores, key=lambda c: -scores[c])
        out.append([DetectedLanguage(language=c, confidence=round(min(scores[c], 1.0) * 100, 2)) for c in order])
    return out


@dataclass(frozen=True)
class Decoding:
    """How a request wants its sentences decoded."""

    beam_size: int = 1
    alternatives: int = 0
    confidence: bool = False

    @property
    def plain(self) -> bool:
        return self.beam_size == 1 and not self.alternatives and not self.confidence


def decoding(state: ServiceState, beam_size: int | None, alternatives: int, confidence: bool) -> Decoding:
    """The request's decoding, checked against the server's bounds (400 with the bound)."""
    s = state.settings
    if not 0 <= alternatives <= s.max_alternatives:
        raise bad_request(f"alternatives must be between 0 and {s.max_alternatives}, got {alternatives}")
    if beam_size is not None and not 1 <= beam_size <= s.max_beam_size:
        raise bad_request(f"beam_size must be between 1 and {s.max_beam_size}, got {beam_size}")
    beam = beam_size or s.beam_size
    if alternatives:  # n alternatives need n + 1 hypotheses
        if beam_size is not None and beam_size < alternatives + 1:
            raise bad_request(f"beam_size {beam_size} cannot give {alternatives} alternatives (needs alternatives + 1)")
        beam = max(beam, min(alternatives + 1, s.max_beam_size))
    return Decoding(beam, alternatives, confidence)


NBest = list[list[tuple[str, float, int]]]  # per piece: (text, score, tokens), best first


@dataclass
class Translated:
    texts: list[str]
    detected: list[DetectedLanguage] | None = None
    alternatives: list[list[str]] | None = None
    confidence: list[float] | None = None


async def translate(
    state: ServiceState,
    texts: list[str],
    source: str,
    target: str,
    how: Decoding = Decoding(),
    charge: Callable[[int], None] | None = None,
    capped: bool = True,
) -> Translated:
    """Translations of `texts` from `source` ("auto": detected per text) into `target`, the
    detected languages when `source` is auto, and the alternatives and confidences `how` asks for.
    `capped`: more sentences than one request may hold (`max_pieces`, at most the queue) are
    refused (413); a file's texts are not capped so (its own limits bound them): they go to the
    scheduler in parts of at most that many sentences, one after the other.

    A text's confidence is 100 x exp(mean log-probability per token) over all its sentences'
    tokens (</s> included): the geometric mean of the probabilities the model gave its own
    output. Through English, the two steps' figures multiply. Alternative k of a text joins each
    sentence's k-th best translation (its best where it has fewer); duplicates are dropped."""
    registry = state.registry
    assert registry is not None
    if not any(target in t for t in registry.targets().values()):
        if source != "auto":
            _refuse_failed(registry, source, target)
        raise bad_request(f"unsupported target language {target!r}; supported pairs: {supported(state)}")
    detected: list[DetectedLanguage] | None = None
    if source == "auto":
        detected = [d[0] for d in await detect(state, texts)]
        sources = [d.language for d in detected]
    else:
        sources = [source] * len(texts)
    routes = {src: registry.route(src, target) for src in set(sources) if src != target}
    for src, route in routes.items():
        if route is None:
            _refuse_failed(registry, src, target)
            raise bad_request(f"unsupported language pair {src}->{target}; supported pairs: {supported(state)}")

    out = Translated(list(texts), detected)
    if not how.plain:
        out.alternatives = [[] for _ in texts]
        out.confidence = [100.0] * len(texts)
    # Split every text into sentences; translate all pieces of one source language as one
    # submission per step (two steps through English where there is no direct model).
    split: dict[str, tuple[list[int], list[list[Segment]]]] = {}
    for src, route in routes.items():
        assert route is not None
        idx = [i for i, s in enumerate(sources) if s == src]
        engine = registry.translators()[route[0][0]]
        limit = engine.max_len - 3  # room for </s> and a target tag
        split[src] = (idx, [split_text(texts[i], limit, engine.n_tokens) for i in idx])
    total = sum(translatable(seg.text) for _, segmented in split.values() for segs in segmented for seg in segs)
    most = _most(state)
    if capped and total > most:  # could never be queued whole: "retry later" would be a lie
        raise too_large(f"too many sentences: {total} > {most} per request")
    if charge:  # the rate limit counts the sentences (429 before any work when it has not got them)
        charge(total)
    for src, route in routes.items():
        assert route is not None
        idx, segmented = split[src]
        segs_in = [seg for segs in segmented for seg in segs if translatable(seg.text)]
        pieces = [seg.text for seg in segs_in]
        # pieces with a degenerate span, and pieces of a word cut by characters (longer than the
        # model takes), go straight to the piecewise path of _keep_protected
        whole = [k for k, seg in enumerate(segs_in) if not seg.in_cut_word and not protect.degenerate(seg.text)]
        tried, tried_factor = await _through(state, route, [pieces[k] for k in whole], how)
        nbest: NBest = [[(seg.text if seg.in_cut_word else "", 0.0, 0)] for seg in segs_in]  # cut words stay
        factor = [1.0] * len(pieces)
        for k, h, f in zip(whole, tried, tried_factor):
            nbest[k], factor[k] = h, f
        await _keep_protected(state, route, pieces, nbest, factor, how)
        results = iter(nbest)
        factors = iter(factor)
        for i, segs in zip(idx, segmented):
            per = [
                (next(results), next(factors)) if translatable(seg.text) else ([(seg.text, 0.0, 0)], 1.0)
                for seg in segs
            ]
            out.texts[i] = join_segments(segs, [h[0][0] for h, _ in per], target)
            if how.plain:
                continue
            assert out.alternatives is not None and out.confidence is not None
            scored = [h[0] for h, _ in per if h[0][2]]
            out.confidence[i] = round(_confidence(scored) * math.prod(f for _, f in per), 2)
            alts: list[str] = []
            for k in range(1, how.alternatives + 1):
                alt = join_segments(segs, [(h[k] if k < len(h) else h[0])[0] for h, _ in per], target)
                if alt != out.texts[i] and alt not in alts:
                    alts.append(alt)
            out.alternatives[i] = alts
    if how.alternatives == 0 and out.alternatives is not None:
        out.alternatives = None
    if not how.confidence:
        out.confidence = None
    return out


async def _through(state: ServiceState, route, pieces: list[str], how: Decoding) -> tuple[NBest, list[float]]:
    """`pieces` along `route` (one step, or two through English): each piece's n-best
    (text, score, tokens) of the last step, and the confidence factor of the steps before it."""
    registry = state.registry
    nbest: NBest = [[(p, 0.0, 0)] for p in pieces]
    factor = [1.0] * len(pieces)  # through English: the first step's confidence
    for n, (model, _, tgt) in enumerate(route):
        inputs = [_model_input(registry, model, p, tgt) for p in pieces]
        if how.plain:  # greedy text only
            pieces = await _batched(state, model, inputs)
            nbest = [[(p, 0.0, 0)] for p in pieces]
            continue
        last = n == len(route) - 1
        options = {"beam_size": how.beam_size, "n_best": how.alternatives + 1 if last else 1}
        nbest = await _batched(state, model, inputs, options)
        if not last:  # the best English goes on, its confidence multiplies
            factor = [f * _confidence([h[0]]) / 100 for f, h in zip(factor, nbest)]
            pieces = [h[0][0] for h in nbest]
    return nbest, factor


async def _keep_protected(
    state: ServiceState, route, pieces: list[str], nbest: NBest, factor: list[float], how: Decoding
) -> None:
    """Where a piece's translation lost a URL, address, mention, hashtag or number of its source
    (service/protect.py), translate it again with placeholders for them, else the text between
    them, and put them back as they were (in place in `nbest` and `factor`; such a piece has no
    alternatives)."""
    broken = [k for k, p in enumerate(pieces) if not protect.kept(p, nbest[k][0][0])]  # True without spans
    # first, again with a placeholder digit for each span (pieces tried whole only: a degenerate
    # one has no translation yet and goes straight to the piecewise path)
    marked = {k: m for k in broken if nbest[k][0][0] and (m := protect.with_placeholders(pieces[k])) is not None}
    if marked:
        tries = list(marked)
        again, again_factor = await _through(
            state, route, [marked[k][0] for k in tries], Decoding(how.beam_size, 0, how.confidence)
        )
        for k, h, f in zip(tries, again, again_factor):
            restored = protect.restore(h[0][0], marked[k][1])
            if restored is not None:
                nbest[k], factor[k] = [(restored, h[0][1], h[0][2])], f
                broken.remove(k)
    if not broken:
        return
    parts = {k: protect.split(pieces[k]) for k in broken}
    todo = {k: protect.texts_to_translate(parts[k]) for k in broken}
    texts = [t for k in broken for t in todo[k]]
    sub, sub_factor = (
        await _through(state, route, texts, Decoding(how.beam_size, 0, how.confidence)) if texts else ([], [])
    )
    at = 0
    for k in broken:
        n = len(todo[k])
        best = [h[0] for h in sub[at : at + n]]
        nbest[k] = [
            (protect.assemble(parts[k], [b[0] for b in best]), sum(b[1] for b in best), sum(b[2] for b in best))
        ]
        factor[k] = math.prod(sub_factor[at : at + n])
        at += n


def _most(state: ServiceState) -> int:
    """The most sentences one submission to the scheduler may hold: a request's cap, which the
    queue must be able to take whole."""
    return min(state.settings.max_pieces, state.settings.max_queue)


async def _batched(state: ServiceState, model: str, inputs: list[str], options: dict | None = None) -> list:
    """`run_batched` in parts of at most `_most` items, one after the other (one part for any
    capped request)."""
    most = _most(state)
    out: list = []
    for at in range(0, len(inputs), most):
        out += await run_batched(state, model, inputs[at : at + most], options)
    return out


def _refuse_failed(registry, source: str, target: str) -> None:
    """A pair whose bundle failed to load is a server fault (503 naming it), not a bad request."""
    name = registry.failed_pairs.get((source, target))
    if name is not None:
        raise ServiceError(503, f"model {name} for {source}->{target} failed to load: {registry.models[name].error}")


def translatable(text: str) -> bool:
    """Whether a sentence has words to translate: a letter of any script. Emoji, symbols,
    numbers and punctuation alone come back exactly as they are (a model would invent words)."""
    return any(unicodedata.category(ch).startswith("L") for ch in text)


def _model_input(registry, model: str, text: str, target: str) -> str:
    manifest = registry.models[model].manifest
    assert manifest is not None
    return manifest.model_input(text, target)


def _confidence(hyps: list[tuple[str, float, int]]) -> float:
    """100 x exp(mean log-probability per token) of the hypotheses' tokens together."""
    tokens = sum(h[2] for h in hyps)
    return 100.0 * math.exp(sum(h[1] for h in hyps) / tokens) if tokens else 100.0


async def translate_markup(
    state: ServiceState,
    texts: list[str],
    source: str,
    target: str,
    how: Decoding = Decoding(),
    charge: Callable[[int], None] | None = None,
    capped: bool = True,
    offload: Offload | None = None,
) -> Translated:
    """`format: "html"`: each text's markup kept, its text translated (service/html.py). With
    `source: "auto"` the language is detected on the visible text. Inline elements are carried
    by the model's word alignment where the pair has a direct model that gives one (through
    English: by the word search alone). Alternatives are not given for markup (an empty list
    each); a confidence is the mean of its text pieces'. `capped` as for `translate`; `offload`
    parses and writes the markup away from the event loop (a file's pages)."""
    detected: list[DetectedLanguage] | None = None
    if source == "auto":
        visible = [BeautifulSoup(t, "html.parser").get_text(" ").strip() or t for t in texts]
        detected = [d[0] for d in await detect(state, visible)]
    out = Translated([], detected)
    pieces_how = Decoding(how.beam_size, 0, how.confidence)
    confidences: list[float] = []
    for i, text in enumerate(texts):
        src = detected[i].language if detected else source
        seen: list[float] = []

        async def run(parts: list[str], src: str = src, seen: list[float] = seen) -> list[str]:
            done = await translate(state, parts, src, target, pieces_how, charge, capped)
            seen += done.confidence or []
            return done.texts

        async def align(pairs: list[tuple[str, str]], src: str = src) -> list[list[tuple[int, int, int, int]]]:
            return await _align(state, pairs, src, target)

        out.texts.append(await translate_html(text, run, align if state.settings.html_alignment else None, offload))
        confidences.append(round(sum(seen) / len(seen), 2) if seen else 100.0)
    if how.alternatives:
        out.alternatives = [[] for _ in texts]
    if how.confidence:
        out.confidence = confidences
    return out


async def _align(
    state: ServiceState, pairs: list[tuple[str, str]], source: str, target: str
) -> list[list[tuple[int, int, int, int]]]:
    """The word alignment of each (text, its translation) by the pair's direct model
    (runtime/translator.align, through the scheduler), in characters of the two strings; no
    links where the pair goes through English, the model has no alignment output, or a text
    holds the item separator."""
    registry = state.registry
    assert registry is not None
    none: list[list[tuple[int, int, int, int]]] = [[] for _ in pairs]
    route = registry.route(source, target) if source != target else None
    if not route or len(route) != 1 or not registry.translators()[route[0][0]].aligns:
        return none
    model, _, tgt = route[0]
    todo = [k for k, (s, t) in enumerate(pairs) if ALIGN_SEP not in s + t]
    inputs = [_model_input(registry, model, pairs[k][0], tgt) for k in todo]
    items = [f"{x}{ALIGN_SEP}{pairs[k][1]}" for k, x in zip(todo, inputs)]
    found = await _batched(state, model, items, {"align": True})
    for k, x, links in zip(todo, inputs, found):
        shift = len(x) - len(pairs[k][0])  # the target tag before the text
        none[k] = [(a, b, c - shift, d - shift) for a, b, c, d in links if c >= shift]
    return none
