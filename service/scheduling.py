"""Work for the models goes through the batcher; overload, deadline and model failure come back
as service errors with stable messages."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from typing import Any

from service.batcher import BatcherStopped, QueueFull, TooBig
from service.errors import ServiceError, busy, too_large
from service.state import ServiceState

log = logging.getLogger("service")


async def run_batched(
    state: ServiceState, model: str, texts: Sequence[str], options: dict[str, Any] | None = None
) -> list[Any]:
    """Submit to the batcher, mapping overload, timeout and model failure to HTTP errors."""
    if not texts:
        return []
    assert state.batcher is not None
    state.metrics.queue_depth.set(state.batcher.queued)
    try:
        return await asyncio.wait_for(state.batcher.submit(model, texts, options), state.settings.request_timeout_s)
    except TooBig as exc:  # could never be queued: "retry later" would be a lie
        raise too_large(str(exc)) from None
    except QueueFull:
        state.metrics.rejected.labels("queue_full").inc()
        raise busy() from None
    except BatcherStopped:
        state.metrics.rejected.labels("shutting_down").inc()
        raise ServiceError(503, "server shutting down, retry later", headers={"Retry-After": "1"}) from None
    except TimeoutError:
        raise ServiceError(504, "request timed out") from None
    except Exception as exc:  # the model failed on this request's batch
        request_id = uuid.uuid4().hex[:12]
        log.error("model %s failed for request_id=%s", model, request_id, exc_info=exc)
        raise ServiceError(500, "internal error", request_id=request_id) from None
    finally:
        state.metrics.queue_depth.set(state.batcher.queued)
