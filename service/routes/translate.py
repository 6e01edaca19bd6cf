"""LibreTranslate-compatible translation: POST /translate, POST /detect, GET /languages."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from service import translation
from service.deps import Call, admitted, ready_state
from service.languages import name, normalize
from service.routes.common import ERRORS, body_doc
from service.schemas import DetectedLanguage, DetectRequest, Language, TranslateRequest, TranslateResponse
from service.state import ServiceState

router = APIRouter(tags=["translation"])


@router.post(
    "/translate",
    response_model=TranslateResponse,
    response_model_exclude_none=True,  # no "detectedLanguage": null, as LibreTranslate
    responses=ERRORS,
    openapi_extra=body_doc(TranslateRequest),
    summary="Translate text (LibreTranslate-compatible)",
)
async def translate(call: Call[TranslateRequest] = Depends(admitted(TranslateRequest, "q"))) -> TranslateResponse:
    body = call.body
    texts = [body.q] if isinstance(body.q, str) else list(body.q)
    how = translation.decoding(call.state, body.beam_size, body.alternatives, body.confidence)
    run = translation.translate_markup if body.format == "html" else translation.translate
    out = await run(call.state, texts, normalize(body.source), normalize(body.target), how)
    if isinstance(body.q, str):
        return TranslateResponse(
            translatedText=out.texts[0],
            detectedLanguage=out.detected[0] if out.detected else None,
            alternatives=out.alternatives[0] if out.alternatives is not None else None,
            confidence=out.confidence[0] if out.confidence is not None else None,
        )
    return TranslateResponse(
        translatedText=out.texts,
        detectedLanguage=out.detected,
        alternatives=out.alternatives,
        confidence=out.confidence,
    )


@router.post(
    "/detect",
    response_model=list[DetectedLanguage],
    responses=ERRORS | {501: {"model": ERRORS[400]["model"]}},
    openapi_extra=body_doc(DetectRequest),
    summary="Identify the language of a text",
)
async def detect(call: Call[DetectRequest] = Depends(admitted(DetectRequest, "q"))) -> list[DetectedLanguage]:
    return (await translation.detect(call.state, [call.body.q]))[0][:3]


@router.get("/languages", response_model=list[Language], summary="Languages and their targets")
async def languages(state: ServiceState = Depends(ready_state)) -> list[Language]:
    """Every source language with every target it reaches, directly or through English."""
    assert state.registry is not None
    targets = state.registry.targets()
    # as LibreTranslate: a language's targets include itself (the text comes back as it is)
    return [Language(code=c, name=name(c), targets=sorted(t | {c})) for c, t in sorted(targets.items())]
