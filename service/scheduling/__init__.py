"""Scheduling: how requests' texts reach the models.

* `queue.py`: the `WorkQueue` both schedulers take work from (arrival order, bounds, drain);
* `batches.py`: whole batches of jobs through a model's runner (`BatchRunner`);
* `batcher.py`: `BatchScheduler`, whole batches merged from concurrent requests (``scheduler = "batch"``);
* `continuous.py`: `ContinuousScheduler`, sentences joining and leaving running decode batches at
  every step (the default), on supervised worker threads (`supervision.py`);
* `policy.py`: the continuous scheduler's admission policy, pure functions (`plan`, `share`, `hold`);
* `submit.py`: `run_batched`, the service's way in (arrival time in, service errors out).
"""

from __future__ import annotations

from typing import Any, Protocol

from service.scheduling.batcher import BatchScheduler
from service.scheduling.continuous import ContinuousScheduler
from service.scheduling.queue import QueueFull, SchedulerStopped, TooBig
from service.scheduling.submit import arrived, run_batched


class Scheduler(Protocol):
    """What the service asks of a scheduler."""

    @property
    def queued(self) -> int: ...

    async def submit(
        self, model: str, texts: Any, options: dict[str, Any] | None = None, arrived: float | None = None
    ) -> list[Any]: ...

    def drain(self, seconds: float) -> None: ...

    def add_model(self, name: str, runner: Any, decoder: Any = None, stepper: Any = None) -> None: ...

    def remove_model(self, name: str) -> bool: ...

    def stop(self, timeout: float = 30.0) -> None: ...


__all__ = [
    "BatchScheduler",
    "ContinuousScheduler",
    "QueueFull",
    "Scheduler",
    "SchedulerStopped",
    "TooBig",
    "arrived",
    "run_batched",
]
