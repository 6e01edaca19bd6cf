"""LibreTranslate-compatible translation: POST /translate, POST /detect, GET /languages."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from service.errors import ServiceError, bad_request
from service.languages import name, translation_code
from service.routes.common import check_limits, guard, parse_body, ready_state, run_batched
from service.schemas import (
    DetectedLanguage,
    DetectRequest,
    ErrorResponse,
    Language,
    TranslateRequest,
    TranslateResponse,
)
from service.state import ServiceState
from service.text import join_segments, split_text

router = APIRouter(tags=["translation"])

ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorResponse} for s in (400, 403, 413, 422, 429, 500, 503, 504)
}


def _body(model) -> dict:
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": schema},
                "application/x-www-form-urlencoded": {"schema": schema},
            },
        }
    }


def _supported(state: ServiceState) -> str:
    pairs = sorted(state.registry.pairs) if state.registry else []
    return ", ".join(f"{s}->{t}" for s, t in pairs) or "none"


async def detect_languages(state: ServiceState, texts: list[str]) -> list[list[DetectedLanguage]]:
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


@router.post(
    "/translate",
    response_model=TranslateResponse,
    response_model_exclude_none=True,  # no "detectedLanguage": null, as LibreTranslate
    responses=ERRORS,
    openapi_extra=_body(TranslateRequest),
    summary="Translate text (LibreTranslate-compatible)",
)
async def translate(request: Request) -> TranslateResponse:
    state = ready_state(request)
    body = await parse_body(request, TranslateRequest)
    guard(request, state, body.api_key)
    texts = [body.q] if isinstance(body.q, str) else list(body.q)
    check_limits(texts, state)
    source, target = body.source.lower(), body.target.lower()
    registry = state.registry
    assert registry is not None
    reachable = registry.targets()
    if not any(target in t for t in reachable.values()):
        raise bad_request(f"unsupported target language {target!r}; supported pairs: {_supported(state)}")
    detected: list[DetectedLanguage] | None = None
    if source == "auto":
        detected = [d[0] for d in await detect_languages(state, texts)]
        sources = [d.language for d in detected]
    else:
        sources = [source] * len(texts)
    routes = {src: registry.route(src, target) for src in set(sources) if src != target}
    for src, route in routes.items():
        if route is None:
            raise bad_request(f"unsupported language pair {src}->{target}; supported pairs: {_supported(state)}")

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
    if isinstance(body.q, str):
        return TranslateResponse(translatedText=results[0], detectedLanguage=detected[0] if detected else None)
    return TranslateResponse(translatedText=results, detectedLanguage=detected)


@router.post(
    "/detect",
    response_model=list[DetectedLanguage],
    responses=ERRORS | {501: {"model": ErrorResponse}},
    openapi_extra=_body(DetectRequest),
    summary="Identify the language of a text",
)
async def detect(request: Request) -> list[DetectedLanguage]:
    state = ready_state(request)
    body = await parse_body(request, DetectRequest)
    guard(request, state, body.api_key)
    check_limits([body.q], state)
    return (await detect_languages(state, [body.q]))[0][:3]


@router.get("/languages", response_model=list[Language], summary="Languages and their targets")
async def languages(request: Request) -> list[Language]:
    """Every source language with every target it reaches, directly or through English."""
    state = ready_state(request)
    assert state.registry is not None
    targets = state.registry.targets()
    return [Language(code=c, name=name(c), targets=sorted(t)) for c, t in sorted(targets.items())]
