"""Translation as the API offers it: language pairs (direct, or through English), detection of
the source, sentence segmentation of long texts and their reassembly. Routes call this; this
calls the scheduler; the engines see sentences only."""

from __future__ import annotations

from service.errors import ServiceError, bad_request
from service.languages import translation_code
from service.scheduling import run_batched
from service.schemas import DetectedLanguage
from service.state import ServiceState
from service.text import join_segments, split_text


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


async def translate(
    state: ServiceState, texts: list[str], source: str, target: str
) -> tuple[list[str], list[DetectedLanguage] | None]:
    """Translations of `texts` from `source` ("auto": detected per text) into `target`, and the
    detected languages when `source` is auto."""
    registry = state.registry
    assert registry is not None
    if not any(target in t for t in registry.targets().values()):
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
            raise bad_request(f"unsupported language pair {src}->{target}; supported pairs: {supported(state)}")

    # Split every text into sentences; translate all pieces of one source language as one
    # submission per step (two steps through English where there is no direct model).
    results = list(texts)
    for src, route in routes.items():
        assert route is not None
        idx = [i for i, s in enumerate(sources) if s == src]
        engine = registry.translators()[route[0][0]]
        limit = engine.max_len - 3  # room for </s> and a target tag
        segmented = [split_text(texts[i], limit, engine.n_tokens) for i in idx]
        pieces = [seg.text for segs in segmented for seg in segs if seg.text]
        for model, _, tgt in route:
            manifest = registry.models[model].manifest
            assert manifest is not None
            pieces = await run_batched(state, model, [manifest.model_input(p, tgt) for p in pieces])
        translated = iter(pieces)
        for i, segs in zip(idx, segmented):
            outs = [next(translated) if seg.text else "" for seg in segs]
            results[i] = join_segments(segs, outs, target)
    return results, detected
