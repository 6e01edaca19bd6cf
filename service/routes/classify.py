"""POST /classify: batched text classification with any classification bundle."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from service.deps import Call, admitted
from service.errors import bad_request
from service.routes.common import ERRORS, body_doc
from service.scheduling import run_batched
from service.schemas import ClassifyRequest, ClassifyResponse, Prediction

router = APIRouter(tags=["classification"])


@router.post(
    "/classify",
    response_model=ClassifyResponse,
    responses=ERRORS,
    openapi_extra=body_doc(ClassifyRequest),
    summary="Classify text (sentiment, language, ...)",
)
async def classify(call: Call[ClassifyRequest] = Depends(admitted(ClassifyRequest, "text"))) -> ClassifyResponse:
    body, state = call.body, call.state
    texts = [body.text] if isinstance(body.text, str) else list(body.text)
    classifiers = state.registry.classifiers() if state.registry else {}
    if body.model not in classifiers:
        raise bad_request(
            f"unknown model {body.model!r}; classification models: {', '.join(sorted(classifiers)) or 'none'}"
        )
    labels = classifiers[body.model].labels
    probs = await run_batched(state, body.model, texts)
    predictions = []
    for p in probs:
        best = int(p.argmax())
        predictions.append(
            Prediction(
                label=labels[best],
                probability=round(float(p[best]), 6),
                probabilities={lab: round(float(v), 6) for lab, v in zip(labels, p)},
            )
        )
    return ClassifyResponse(model=body.model, predictions=predictions)
