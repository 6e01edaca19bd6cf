"""The service's way into the scheduler: `run_batched` submits a request's texts with the time the
request arrived, and maps overload, shutdown, timeout and model failure to service errors with
stable messages. The schedulers themselves know nothing of requests' transport."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from service.errors import ServiceError, busy, too_large
from service.scheduling.queue import QueueFull, SchedulerStopped, TooBig

if TYPE_CHECKING:  # the state holds a scheduler: only its type is needed here
    from service.registry import Registry
    from service.state import ServiceState

log = logging.getLogger("service")

# When the request being handled arrived (time.monotonic(); set by the middleware, copied into the
# handler's tasks): its later passes (pivot, protected spans) queue in its arrival order.
arrived: contextvars.ContextVar[float | None] = contextvars.ContextVar("transerve_arrived", default=None)


async def run_batched(
    state: ServiceState, model: str, texts: Sequence[str], options: dict[str, Any] | None = None
) -> list[Any]:
    """Submit to the scheduler, mapping overload, timeout and model failure to service errors. A
    lazily loaded model (service/registry.py, max_loaded_models) is loaded first, within the
    request's time, and kept loaded until its answer is in (`Registry.using`); one that fails to
    load answers 503 naming it."""
    if not texts:
        return []
    scheduler = state.scheduler
    assert scheduler is not None
    registry, at = getattr(state, "registry", None), arrived.get()
    if registry is not None and registry.lazy and model in registry.models:
        submitted = _using(registry, model, lambda: scheduler.submit(model, texts, options, at))
    else:
        submitted = scheduler.submit(model, texts, options, at)
    state.metrics.queue_depth.set(scheduler.queued)
    try:
        return await asyncio.wait_for(submitted, state.settings.request_timeout_s)
    except ServiceError:  # the model failed to load
        raise
    except TooBig as exc:  # could never be queued: "retry later" would be a lie
        raise too_large(str(exc)) from None
    except QueueFull:
        state.metrics.rejected.labels("queue_full").inc()
        raise busy() from None
    except SchedulerStopped:
        state.metrics.rejected.labels("shutting_down").inc()
        raise ServiceError(503, "server shutting down, retry later", headers={"Retry-After": "1"}) from None
    except TimeoutError:
        raise ServiceError(504, "request timed out") from None
    except Exception as exc:  # the model failed on this request's batch
        request_id = uuid.uuid4().hex[:12]
        log.error("model %s failed for request_id=%s", model, request_id, exc_info=exc)
        raise ServiceError(500, "internal error", request_id=request_id) from None
    finally:
        state.metrics.queue_depth.set(scheduler.queued)


async def _using(registry: Registry, model: str, submit: Callable[[], Awaitable[list[Any]]]) -> list[Any]:
    """`submit()` with `model` loaded first and kept from eviction until its answer is in."""
    async with registry.using(model):
        return await submit()
