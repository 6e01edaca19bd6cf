"""Translation as the API offers it: language pairs (direct, or through English), detection of
the source, sentence segmentation of long texts and their reassembly. Routes call this; this
calls the scheduler; the engines see sentences only."""

from __future__ import annotations

import hashlib
import math
import unicodedata
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

from bs4 import BeautifulSoup

from service import glossary as glossaries
from service import protect
from service.cache import ALIGNMENT, Entry, Key, Links, TranslationCache
from service.errors import ServiceError, bad_request, too_large
from service.html import Offload, translate_html
from service.languages import translation_code
from service.registry import Registry, Route
from service.runtime.alignment import AlignRequest, Link
from service.runtime.engine import Translation
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
    shortlist: bool = True  # False: without the bundle's lexical shortlist (runtime/shortlist.py)

    @property
    def plain(self) -> bool:
        return self.beam_size == 1 and not self.alternatives and not self.confidence and self.shortlist


def decoding(
    state: ServiceState, beam_size: int | None, alternatives: int, confidence: bool, shortlist: bool = True
) -> Decoding:
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
    return Decoding(beam, alternatives, confidence, shortlist)


@dataclass
class Translated:
    texts: list[str]
    detected: list[DetectedLanguage] | None = None
    alternatives: list[list[str]] | None = None
    confidence: list[float] | None = None


Hypotheses = list[Translation]  # one sentence's translations, best first


@dataclass(eq=False)
class Sentence:
    """One segment of a text on its way through the stages: its translations so far (an
    untranslatable segment, or a piece of a word cut by characters, is its own translation), the
    confidence of the route's steps before the last (through English; 1.0 for one step), and
    what comes back in place of a protected span where that is not the span itself (an ICU
    message, its branches translated by `translate_messages`; a glossary term, its target), the
    glossary terms matched in it (`terms`, (start, end) of the source: more protected spans) and
    the digest of those (its cache key's glossary part)."""

    segment: Segment
    translate: bool  # it has words (`translatable`): the stages see it
    hyps: Hypotheses
    factor: float = 1.0
    spans: dict[str, str] = field(default_factory=dict)
    terms: list[tuple[int, int]] = field(default_factory=list)
    glossary: str | None = None

    @classmethod
    def of(cls, segment: Segment) -> Sentence:
        todo = translatable(segment.text)
        kept = segment.text if segment.in_cut_word or not todo else ""  # "": no translation yet
        return cls(segment, todo, [Translation(kept, 0.0, 0)])

    @property
    def source(self) -> str:
        return self.segment.text

    @property
    def best(self) -> Translation:
        return self.hyps[0]

    def alternative(self, k: int) -> Translation:
        """Its k-th best translation, its best where it has fewer."""
        return self.hyps[k] if k < len(self.hyps) else self.hyps[0]


@dataclass
class Group:
    """The texts of one source language and the route that translates them."""

    route: Route
    indices: list[int]  # the texts' places in the request
    texts: list[list[Sentence]]  # each text's segments

    @property
    def sentences(self) -> list[Sentence]:
        """The segments the stages translate, text after text."""
        return [s for text in self.texts for s in text if s.translate]


@dataclass
class Plan:
    """A request's texts routed and segmented, before any model runs."""

    detected: list[DetectedLanguage] | None
    groups: list[Group]

    @property
    def sentences(self) -> int:
        return sum(len(g.sentences) for g in self.groups)


class Outcome(NamedTuple):
    """A text through a route: the last step's translations and the confidence of the steps
    before it."""

    hyps: Hypotheses
    factor: float


async def translate(
    state: ServiceState,
    texts: list[str],
    source: str,
    target: str,
    how: Decoding = Decoding(),
    charge: Callable[[int], None] | None = None,
    capped: bool = True,
    glossary: Sequence[tuple[str, str]] = (),
) -> Translated:
    """Translations of `texts` from `source` ("auto": detected per text) into `target`, the
    detected languages when `source` is auto, and the alternatives and confidences `how` asks for.
    `capped`: more sentences than one request may hold (`max_pieces`, at most the queue) are
    refused (413); a file's texts are not capped so (its own limits bound them): they go to the
    scheduler in parts of at most that many sentences, one after the other.

    `plan` routes each source language and splits the texts into sentences; the `STAGES` run
    over each language's sentences in turn (all of them one submission per stage and step),
    but for those the cache answers (`translate_sentences`); `assemble` joins the sentences and
    gives the alternatives and confidences.

    A text's confidence is 100 x exp(mean log-probability per token) over all its sentences'
    tokens (</s> included): the geometric mean of the probabilities the model gave its own
    output. Through English, the two steps' figures multiply. Alternative k of a text joins each
    sentence's k-th best translation (its best where it has fewer); duplicates are dropped.

    `glossary`: (term, its translation) pairs of the request, over the server's glossary file
    of each pair (`apply_glossary`)."""
    planned = await plan(state, texts, source, target)
    total, most = planned.sentences, _most(state)
    if capped and total > most:  # could never be queued whole: "retry later" would be a lie
        raise too_large(f"too many sentences: {total} > {most} per request")
    if charge:  # the rate limit counts the sentences (429 before any work when it has not got them)
        charge(total)
    for group in planned.groups:
        apply_glossary(state, group, target, glossary)
        await translate_sentences(state, group.route, group.sentences, how)
    return assemble(planned, texts, target, how)


def apply_glossary(state: ServiceState, group: Group, target: str, request: Sequence[tuple[str, str]]) -> None:
    """The glossary terms of each sentence of `group` (service/glossary.py: the request's over
    the server's file for the pair, `TRANSERVE_GLOSSARY_DIR`): protected spans whose replacement
    is the term's target (`keep_protected` translates such a sentence with a digit in place of
    each, and puts the target where the digit comes out), those that overlap a protected span
    left out. Through English the terms are spans of the source and come back as the target term
    in the final text (the English step never sees them). The digest of the (matched text,
    target) pairs applied is the glossary part of the sentence's cache key."""
    terms = glossaries.terms(state.settings.glossary_dir, group.route[0].source, target, request)
    if not terms:
        return
    for s in group.sentences:
        found = terms.find(s.source)
        free = set(protect.terms_free(s.source, [(a, b) for a, b, _ in found])) if found else set()
        applied = [(s.source[a:b], t) for a, b, t in found if (a, b) in free]
        if not applied:
            continue
        s.terms = [(a, b) for a, b, _ in found if (a, b) in free]
        s.spans.update(applied)
        s.glossary = glossaries.digest(applied)


async def plan(state: ServiceState, texts: list[str], source: str, target: str) -> Plan:
    """Each text's source language (detected for "auto"), the route from it to `target` (none
    for a text already in `target`: it stays as it is), and its segments, each at most what the
    route's first model takes. An unsupported target or pair is refused (400), one whose bundle
    failed to load too (503)."""
    registry = _registry(state)
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
    routes: dict[str, Route] = {}
    for src in set(sources):
        if src == target:
            continue
        route = registry.route(src, target)
        if route is None:
            _refuse_failed(registry, src, target)
            raise bad_request(f"unsupported language pair {src}->{target}; supported pairs: {supported(state)}")
        routes[src] = route
    groups = []
    for src, route in routes.items():
        idx = [i for i, s in enumerate(sources) if s == src]
        engine = await registry.translator(route[0].model)  # loaded first when it loads on demand
        limit = engine.max_len - 3  # room for </s> and a target tag
        segmented = [split_text(texts[i], limit, engine.n_tokens) for i in idx]
        groups.append(Group(route, idx, [[Sentence.of(seg) for seg in segs] for segs in segmented]))
    return Plan(detected, groups)


async def translate_messages(state: ServiceState, route: Route, sentences: list[Sentence], how: Decoding) -> None:
    """Stage: the ICU plural/select messages of the sentences (`{n, plural, one {# file} other {#
    files}}`, service/protect.py): the text of each branch is translated as a sentence of its own
    through the stages (a message nested in a branch by this one again), and the message rebuilt
    around the translations, its structure kept; `keep_protected` puts it in the sentence's
    translation in place of the message."""
    found = [(s, s.source[a:b]) for s in sentences for a, b in protect.messages(s.source)]
    parts = [protect.branches(message) for _, message in found]
    texts = [protect.texts_to_translate(p) for p in parts]
    inner = [Sentence.of(Segment(t, "")) for ts in texts for t in ts]
    if any(b.translate for b in inner):
        one = Decoding(how.beam_size, 0, how.confidence, how.shortlist)
        await translate_sentences(state, route, [b for b in inner if b.translate], one)
    done = iter(inner)
    for (s, message), p, ts in zip(found, parts, texts):
        s.spans[message] = protect.assemble(p, [next(done).best.text for _ in ts])


async def translate_whole(state: ServiceState, route: Route, sentences: list[Sentence], how: Decoding) -> None:
    """Stage: the sentences no stage has translated yet (a piece of a word cut by characters, one
    longer than the model takes, is its own translation), each whole; but for those with a
    degenerate protected span or an ICU message: `keep_protected` translates them around it (a
    sentence with glossary terms is tried whole: `place_glossary`)."""
    whole = [
        s
        for s in sentences
        if not s.best.text and not protect.degenerate(s.source) and not set(s.spans) - _term_texts(s)
    ]
    for s, (hyps, factor) in zip(whole, await _through(state, route, [s.source for s in whole], how)):
        s.hyps, s.factor = hyps, factor


def _term_texts(s: Sentence) -> set[str]:
    return {s.source[a:b] for a, b in s.terms}


async def place_glossary(state: ServiceState, route: Route, sentences: list[Sentence], how: Decoding) -> None:
    """Stage: a sentence with glossary terms, translated whole, keeps that translation with each
    term's target in it where `glossary.place` can put it there: a target it already holds is
    kept (in the target's case), the others replace the words the model's alignment links to
    their term (a direct route whose model aligns). Each hypothesis so placed is one (the best
    must be, and every span of the source kept: else `keep_protected` translates the sentence
    again with a digit in place of each term)."""
    todo = [s for s in sentences if s.terms and s.best.text]
    found = {id(s): [(a, b, s.spans[s.source[a:b]]) for a, b in s.terms] for s in todo}
    placed = {(id(s), k): glossaries.place(h.text, found[id(s)]) for s in todo for k, h in enumerate(s.hyps)}
    need = [(s, k) for s in todo for k in range(len(s.hyps)) if placed[(id(s), k)] is None]
    if need:
        pairs = [(s.source, s.hyps[k].text) for s, k in need]
        for (s, k), links in zip(need, await _align(state, pairs, route[0].source, route[-1].target)):
            if links:
                placed[(id(s), k)] = glossaries.place(s.hyps[k].text, found[id(s)], links)
    for s in todo:
        texts = [placed[(id(s), k)] for k in range(len(s.hyps))]
        best = texts[0]
        if best is not None and protect.kept(s.source, best):
            s.hyps = [h._replace(text=t) for h, t in zip(s.hyps, texts) if t is not None]
            s.terms = []  # in place: `keep_protected` has nothing to do for them


async def keep_protected(state: ServiceState, route: Route, sentences: list[Sentence], how: Decoding) -> None:
    """Stage: where a sentence's translation lost a URL, address, mention, hashtag, number or
    placeholder of its source, or has a placeholder more (service/protect.py), or was not tried
    whole (a degenerate span, an ICU message, a glossary term), translate it again with a digit
    in place of each span, else the text between them, and put them back as they were, an ICU
    message as `translate_messages` rebuilt it, a glossary term as its target (such a sentence
    has no alternatives; but one with glossary terms: each hypothesis whose digits all come back
    is one, with its target terms)."""
    one = Decoding(how.beam_size, 0, how.confidence, how.shortlist)
    # True without spans; a sentence with glossary terms was not tried whole
    broken = [s for s in sentences if s.terms or not protect.kept(s.source, s.best.text)]
    # first, again with a placeholder digit for each span (none where there are more spans than
    # digits, or no words between them: the piecewise path has nothing to translate then)
    marked = [(s, m) for s in broken if (m := protect.with_placeholders(s.source, s.terms)) is not None]
    restored: set[int] = set()
    for group in ([x for x in marked if not x[0].terms], [x for x in marked if x[0].terms]):
        if not group:
            continue
        decoding = how if group[0][0].terms else one  # a glossary's sentences keep their alternatives
        found = await _through(state, route, [m[0] for _, m in group], decoding)
        for (s, (sent, spans)), (hyps, factor) in zip(group, found):
            back = [s.spans.get(span, span) for span in spans]
            back_in = [protect.restore(h.text, back, sent) for h in hyps]
            if back_in[0] is not None:  # the best one's digits all came back; others only where theirs did
                s.hyps = [h._replace(text=t) for h, t in zip(hyps, back_in) if t is not None]
                s.factor = factor
                restored.add(id(s))
    broken = [s for s in broken if id(s) not in restored]
    parts = [protect.split(s.source, s.terms) for s in broken]
    todo = [protect.texts_to_translate(p) for p in parts]
    done = iter(await _through(state, route, [t for texts in todo for t in texts], one))
    for s, p, texts in zip(broken, parts, todo):
        outcomes = [next(done) for _ in texts]
        best = [o.hyps[0] for o in outcomes]
        assembled = protect.assemble(p, [b.text for b in best], s.spans)
        s.hyps = [Translation(assembled, sum(b.score for b in best), sum(b.length for b in best))]
        s.factor = math.prod(o.factor for o in outcomes)


Stage = Callable[[ServiceState, Route, list[Sentence], Decoding], Awaitable[None]]
# What happens to each source language's sentences between `plan` and `assemble`, in order; a
# stage sees every sentence (with its translations so far) and may change any; the sentences
# the cache answers never reach them (`translate_sentences`).
STAGES: tuple[Stage, ...] = (translate_messages, translate_whole, place_glossary, keep_protected)


async def translate_sentences(state: ServiceState, route: Route, sentences: list[Sentence], how: Decoding) -> None:
    """The `STAGES` over `sentences` (of one route and decoding), between the cache's lookup and
    store where there is a cache (`TRANSERVE_CACHE_MB`): a sentence found gets its final
    hypotheses and factor and skips the stages (so no stage needs to know of the cache); of the
    rest, the first of each key goes through them, and its repeats in the request and the cache
    get its final state. Exact: a sentence's translation depends on its key alone (the served
    variants are batch-invariant)."""
    cache = state.cache
    pending: dict[Key, list[Sentence]] = {}
    if cache is not None:
        sentences, pending = cache_lookup(state, cache, route, sentences, how)
    for stage in STAGES:
        await stage(state, route, sentences, how)
    if cache is not None:
        cache_store(cache, pending)


def cache_lookup(
    state: ServiceState, cache: TranslationCache, route: Route, sentences: list[Sentence], how: Decoding
) -> tuple[list[Sentence], dict[Key, list[Sentence]]]:
    """Lookup: each sentence with no translation yet (not a piece of a cut word: that is its own)
    gets its cached final state where there is one. The sentences for the stages (a repeat of a
    sentence in the request waits for its first), and the misses by key, the first of each the
    one the stages translate. Counts a sentence answered without decoding (cached, or a repeat)
    as a hit, the first of each miss as a miss."""
    fresh = [s for s in sentences if not s.best.text]
    route_part, how_part = route_key(state, cache, route), cast(Decoding, cache.parts.setdefault(how, how))
    keys = [sentence_key(route_part, how_part, s.source, s.glossary) for s in fresh]
    pending: dict[Key, list[Sentence]] = {}
    answered: set[int] = set()  # found, or a repeat of a miss (its translation may be "", as a fresh one's)
    for s, key, entry in zip(fresh, keys, cache.get_many(keys)):
        if isinstance(entry, Entry):
            s.hyps, s.factor = list(entry.hyps), entry.factor
            answered.add(id(s))
        else:
            if key in pending:
                answered.add(id(s))
            pending.setdefault(key, []).append(s)
    cache.count(len(answered), len(pending))
    return [s for s in sentences if id(s) not in answered], pending


def cache_store(cache: TranslationCache, pending: dict[Key, list[Sentence]]) -> None:
    """Store (after the stages): each miss's final state (its hypotheses with their scores and
    lengths, its factor: what `assemble` reads), given to its repeats in the request too."""
    items = []
    for key, (first, *repeats) in pending.items():
        entry = Entry(tuple(first.hyps), first.factor)
        for s in repeats:
            s.hyps, s.factor = list(entry.hyps), entry.factor
        items.append((key, entry))
    cache.put_many(items)


def sentence_key(route_part: Hashable, how: Decoding, text: str, glossary: Hashable = None) -> Key:
    """A sentence's cache key: its route's bundles and languages (`route_key`), the decoding
    options (`Decoding`: beam size, alternatives, confidence; a field added to it is in the key
    too), the glossary applied (the digest of the sentence's (term, target) pairs, None for a
    sentence with no term: `apply_glossary`) and the sentence exactly."""
    return (route_part, how, glossary, text)


def align_key(route_part: Hashable, source: str, translation: str) -> Key:
    """An HTML block's word alignment's cache key: its direct route (`route_key`), the block and
    its translation exactly."""
    return (route_part, ALIGNMENT, source, translation)


def route_key(state: ServiceState, cache: TranslationCache, route: Route) -> Hashable:
    """The route's part of its sentences' keys, made once per route (one object, shared by its
    entries): each step's bundle (name, manifest version, the variant it serves, a digest of
    its files' checksums) and languages, and the settings that change a decoding (length
    penalty, target vocabularies). A lazily loaded bundle, evicted and loaded again, keeps its
    key: its outputs are the same."""
    registry = _registry(state)
    memo = (id(registry), tuple(route))  # the registry is made once and kept with the state's cache
    part = cache.parts.get(memo)
    if part is None:
        settings, steps = state.settings, []
        for model, source, target in route:
            manifest = registry.models[model].manifest
            assert manifest is not None
            # the variant registry._engine serves: the setting's where the bundle has it
            variant = settings.variant if settings.variant in manifest.variants else manifest.default_variant
            files = hashlib.sha256(repr(sorted(manifest.files.items())).encode()).hexdigest()[:16]
            steps.append((model, manifest.version, variant, files, source, target))
        part = cache.parts[memo] = (tuple(steps), settings.length_penalty, settings.target_vocab)
    return part


def assemble(planned: Plan, texts: list[str], target: str, how: Decoding) -> Translated:
    """The answer: each text's sentences joined with its separators (a text already in `target`
    as it came), and the alternatives and confidences `how` asks for."""
    out = Translated(list(texts), planned.detected)
    if how.alternatives:
        out.alternatives = [[] for _ in texts]
    if how.confidence:
        out.confidence = [100.0] * len(texts)
    for group in planned.groups:
        for i, sentences in zip(group.indices, group.texts):
            segments = [s.segment for s in sentences]
            out.texts[i] = join_segments(segments, [s.best.text for s in sentences], target)
            if out.confidence is not None:
                scored = [s.best for s in sentences if s.best.length]
                out.confidence[i] = round(_confidence(scored) * math.prod(s.factor for s in sentences), 2)
            if out.alternatives is not None:
                out.alternatives[i] = alts = []
                for k in range(1, how.alternatives + 1):
                    alt = join_segments(segments, [s.alternative(k).text for s in sentences], target)
                    if alt != out.texts[i] and alt not in alts:
                        alts.append(alt)
    return out


async def _through(state: ServiceState, route: Route, texts: list[str], how: Decoding) -> list[Outcome]:
    """`texts` along `route` (one step, or two through English): the best of a step goes on to
    the next, its confidence multiplying the factor."""
    registry = _registry(state)
    outcomes = [Outcome([Translation(t, 0.0, 0)], 1.0) for t in texts]
    for n, (model, _, tgt) in enumerate(route):
        inputs = [_model_input(registry, model, o.hyps[0].text, tgt) for o in outcomes]
        if how.plain:  # greedy text only
            found = await _batched(state, model, inputs)
            outcomes = [Outcome([Translation(t, 0.0, 0)], o.factor) for t, o in zip(found, outcomes)]
            continue
        last = n == len(route) - 1
        options = {"beam_size": how.beam_size, "n_best": how.alternatives + 1 if last else 1}
        if not how.shortlist:
            options["shortlist"] = False
        # the continuous scheduler answers scored greedy rows as plain (text, score, length) tuples
        found = [[Translation(*h) for h in hyps] for hyps in await _batched(state, model, inputs, options)]
        outcomes = [
            Outcome(hyps, o.factor if last else o.factor * _confidence([hyps[0]]) / 100)
            for hyps, o in zip(found, outcomes)
        ]
    return outcomes


def _most(state: ServiceState) -> int:
    """The most sentences one submission to the scheduler may hold: a request's cap, which the
    queue must be able to take whole."""
    return min(state.settings.max_pieces, state.settings.max_queue)


async def _batched(
    state: ServiceState,
    model: str,
    items: Sequence[Any],
    options: dict[str, Any] | None = None,
    size: Callable[[Any], int] | None = None,
) -> list[Any]:
    """`run_batched` in parts of at most `_most` items, one after the other (one part for any
    capped request). `size`: the length of an item the scheduler cannot measure (an alignment
    request): each part goes shortest first, as the scheduler orders texts, so that its batches
    pad as little."""
    most = _most(state)
    out: list[Any] = []
    for at in range(0, len(items), most):
        part = items[at : at + most]
        order = sorted(range(len(part)), key=lambda k: size(part[k])) if size else range(len(part))
        answers: list[Any] = [None] * len(part)
        for k, answer in zip(order, await run_batched(state, model, [part[k] for k in order], options)):
            answers[k] = answer
        out += answers
    return out


def _registry(state: ServiceState) -> Registry:
    registry = state.registry
    assert registry is not None  # the routes answer 503 until the models are loaded
    return registry


def _refuse_failed(registry: Registry, source: str, target: str) -> None:
    """A pair whose bundle failed to load is a server fault (503 naming it), not a bad request."""
    name = registry.failed_pairs.get((source, target))
    if name is not None:
        raise ServiceError(503, f"model {name} for {source}->{target} failed to load: {registry.models[name].error}")


def translatable(text: str) -> bool:
    """Whether a sentence has words to translate: a letter of any script outside its protected
    spans (or in the branches of an ICU message). Emoji, symbols, numbers, punctuation, a URL or
    a placeholder alone come back exactly as they are (a model would invent words)."""
    return any(unicodedata.category(ch).startswith("L") for ch in protect.unprotected(text))


def _model_input(registry: Registry, model: str, text: str, target: str) -> str:
    manifest = registry.models[model].manifest
    assert manifest is not None
    return manifest.model_input(text, target)


def _confidence(hyps: list[Translation]) -> float:
    """100 x exp(mean log-probability per token) of the hypotheses' tokens together."""
    tokens = sum(h.length for h in hyps)
    return 100.0 * math.exp(sum(h.score for h in hyps) / tokens) if tokens else 100.0


async def translate_markup(
    state: ServiceState,
    texts: list[str],
    source: str,
    target: str,
    how: Decoding = Decoding(),
    charge: Callable[[int], None] | None = None,
    capped: bool = True,
    offload: Offload | None = None,
    glossary: Sequence[tuple[str, str]] = (),
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
    pieces_how = Decoding(how.beam_size, 0, how.confidence, how.shortlist)
    confidences: list[float] = []
    for i, text in enumerate(texts):
        src = detected[i].language if detected else source
        seen: list[float] = []

        async def run(parts: list[str], src: str = src, seen: list[float] = seen) -> list[str]:
            done = await translate(state, parts, src, target, pieces_how, charge, capped, glossary)
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


async def _align(state: ServiceState, pairs: list[tuple[str, str]], source: str, target: str) -> list[list[Link]]:
    """The word alignment of each (text, its translation) by the pair's direct model
    (runtime/alignment.py, through the scheduler), in characters of the two strings; no links
    where the pair goes through English or the model has no alignment output."""
    registry = _registry(state)
    none: list[list[Link]] = [[] for _ in pairs]
    route = registry.route(source, target) if source != target else None
    if not route or len(route) != 1 or not (await registry.translator(route[0].model)).aligns:
        return none
    model, _, tgt = route[0]
    cache = state.cache
    todo: dict[tuple[str, str], list[int]] = {}  # each pair not cached, and where it is in `pairs`
    keys: dict[tuple[str, str], Key] = {}
    if cache is not None:  # exact as the sentences are: the forced decoding is batch-invariant too
        part = route_key(state, cache, route)
        keys = {pair: align_key(part, *pair) for pair in pairs}
        found = dict(zip(keys, cache.get_many(list(keys.values()))))
        for k, pair in enumerate(pairs):
            if found[pair] is None:
                todo.setdefault(pair, []).append(k)
            else:
                none[k] = list(cast(Links, found[pair]))
        cache.count(len(pairs) - len(todo), len(todo), ALIGNMENT)
    else:
        for k, pair in enumerate(pairs):
            todo.setdefault(pair, []).append(k)
    requests = [AlignRequest(_model_input(registry, model, text, tgt), translated) for text, translated in todo]
    done = await _batched(state, model, requests, {"align": True}, size=lambda r: len(r.source) + len(r.translation))
    for pair, request, links in zip(todo, requests, done):
        shift = len(request.source) - len(pair[0])  # the target tag before the text
        kept = [(a, b, c - shift, d - shift) for a, b, c, d in links if c >= shift]
        for k in todo[pair]:
            none[k] = list(kept)
    if cache is not None:
        cache.put_many([(keys[pair], tuple(none[ks[0]])) for pair, ks in todo.items()])
    return none
