"""Helpers shared by the routes: state, body parsing (JSON or form), auth, batching."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Sequence
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from service.batcher import BatcherStopped, QueueFull
from service.errors import ServiceError, busy, not_ready, too_large
from service.security import authorize
from service.state import ServiceState

log = logging.getLogger("service")
M = TypeVar("M", bound=BaseModel)

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def ready_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    if state.registry is None or state.batcher is None:
        raise not_ready()
    return state


async def parse_body(request: Request, model: type[M]) -> M:
    """The body as `model`, from JSON or (as LibreTranslate accepts) a form."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype in FORM_TYPES:
        form = await request.form()
        data: Any = {k: (v if len(v) > 1 else v[0]) for k in form.keys() if (v := form.getlist(k))}
    else:
        raw = await request.body()
        if not raw:
            raise ServiceError(400, "empty request body; send JSON or a form")
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ServiceError(400, "request body is not valid JSON") from None
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise RequestValidationError(e.errors(include_url=False, include_context=False)) from None


def guard(request: Request, state: ServiceState, api_key: str | None) -> None:
    identity = authorize(request, state.settings, api_key)
    if state.rate_limiter:
        try:
            state.rate_limiter.check(identity)
        except ServiceError:
            state.metrics.rejected.labels("rate_limit").inc()
            raise


def check_limits(texts: Sequence[str], state: ServiceState) -> None:
    s = state.settings
    if len(texts) > s.max_items:
        raise too_large(f"too many texts: {len(texts)} > {s.max_items}")
    total = sum(len(t) for t in texts)
    if total > s.max_chars:
        raise too_large(f"text too long: {total} characters > {s.max_chars}")


async def run_batched(state: ServiceState, model: str, texts: Sequence[str]) -> list[Any]:
    """Submit to the batcher, mapping overload, timeout and model failure to HTTP errors."""
    if not texts:
        return []
    assert state.batcher is not None
    state.metrics.queue_depth.set(state.batcher.queued)
    try:
        return await asyncio.wait_for(state.batcher.submit(model, texts), state.settings.request_timeout_s)
    except (QueueFull, BatcherStopped):
        state.metrics.rejected.labels("queue_full").inc()
        raise busy() from None
    except TimeoutError:
        raise ServiceError(504, "request timed out") from None
    except Exception as exc:  # the model failed on this request's batch
        request_id = uuid.uuid4().hex[:12]
        log.error("model %s failed for request_id=%s", model, request_id, exc_info=exc)
        raise ServiceError(500, "internal error", request_id=request_id) from None
    finally:
        state.metrics.queue_depth.set(state.batcher.queued)
