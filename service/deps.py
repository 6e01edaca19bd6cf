"""FastAPI dependencies: what every model route needs before its own work.

`Admitted(Model)` gives a route its validated request once the service is ready, the body is
parsed (JSON, urlencoded or multipart form, with the query string's parameters beneath it, as
LibreTranslate's ``request.values``), the caller is authorised and within its rate limit, and the
texts are within the size limits.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from service.errors import ServiceError, not_ready, too_large
from service.security import authenticate, charge_failure
from service.state import ServiceState

M = TypeVar("M", bound=BaseModel)

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def ready_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    if state.registry is None or state.scheduler is None:
        raise not_ready()
    return state


async def request_values(request: Request) -> dict[str, Any]:
    """The request's parameters: the query string, then the form or JSON body over it."""
    values: dict[str, Any] = {
        k: (v if len(v) > 1 else v[0]) for k in request.query_params if (v := request.query_params.getlist(k))
    }
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype and ctype not in FORM_TYPES and ctype != "application/json":
        # e.g. text/plain, which a cross-site form may send without a CORS preflight
        raise ServiceError(415, f"unsupported content type {ctype!r}; send application/json or a form")
    if ctype in FORM_TYPES:
        form = await request.form()
        values.update({k: (f if len(f) > 1 else f[0]) for k in form.keys() if (f := form.getlist(k))})
        return values
    raw = await request.body()
    if not raw.strip():
        if values:
            return values
        raise ServiceError(400, "empty request body; send JSON or a form")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ServiceError(400, "request body is not valid JSON") from None
    except RecursionError:  # nested deeper than the parser goes (even in an ignored field)
        raise ServiceError(400, "request body is nested too deeply") from None
    except ValueError as e:  # e.g. an integer of more digits than Python converts (4300)
        raise ServiceError(400, f"request body is not acceptable JSON: {e}") from None
    if not isinstance(data, dict):
        raise ServiceError(400, "request body must be a JSON object")
    return {**values, **data}


def check_limits(texts: Sequence[str], state: ServiceState) -> None:
    s = state.settings
    if len(texts) > s.max_items:
        raise too_large(f"too many texts: {len(texts)} > {s.max_items}")
    total = sum(len(t) for t in texts)
    if total > s.max_chars:
        raise too_large(f"text too long: {total} characters > {s.max_chars}")


def guard(request: Request, state: ServiceState, api_key: str | None) -> str:
    """Check the caller's key (a wrong one costs its address a token) and take one token of its
    rate limit; returns its identity."""
    identity = authenticate(request, state.settings, api_key)
    charge(state, identity, 1)
    return identity


def charge(state: ServiceState, identity: str, cost: int) -> None:
    """Take `cost` tokens of `identity`'s rate limit (429 when it has not got them)."""
    if state.rate_limiter and cost > 0:
        try:
            state.rate_limiter.check(identity, cost=cost)
        except ServiceError:
            state.metrics.rejected.labels("rate_limit").inc()
            raise


@dataclass
class Call(Generic[M]):
    """An admitted model request: the service state and the validated body."""

    state: ServiceState
    body: M
    identity: str = ""  # whom the rate limit charges

    def charge_sentences(self, sentences: int) -> None:
        """With the rate limit counting sentences: the sentences beyond the one admission took."""
        if self.state.settings.rate_limit_by == "sentences":
            charge(self.state, self.identity, sentences - 1)


def admitted(model: type[M], texts_of: str):
    """A dependency giving `Call[model]` for a request that may use the models; `texts_of` names
    the field holding the text(s), whose size is checked."""

    async def dependency(request: Request, state: ServiceState = Depends(ready_state)) -> Call[M]:
        try:
            values = await request_values(request)
            try:
                body = model.model_validate(values)
            except ValidationError as e:
                raise RequestValidationError(e.errors(include_url=False, include_context=False)) from None
        except (ServiceError, RequestValidationError):
            # a bad body costs the caller's address a token too (a bad key does in `guard`):
            # flooding with invalid requests is throttled like any other traffic
            charge_failure(request)
            raise
        identity = guard(request, state, getattr(body, "api_key", None))
        value = getattr(body, texts_of)
        check_limits([value] if isinstance(value, str) else list(value), state)
        return Call(state, body, identity)

    return dependency
