"""Whole-batch scheduling (`scheduler = "batch"`): concurrent requests' texts are merged into model
calls on one worker thread.

The event loop never runs a model: a route submits its texts and awaits a future. The worker
takes the oldest waiting job, waits up to ``max_wait_ms`` for more jobs for the same model (or
until ``max_batch_size`` texts are there), sorts the texts by length to avoid padding, runs the
model in chunks of at most ``max_batch_size`` and hands every job its own results. One worker
keeps one model call at a time on the cores, which on a small CPU is the fastest schedule.

The wait is skipped when nothing else can join: `in_flight` (the number of model requests the
server is handling, from the middleware) is compared with the callers waiting on the queue
(queued, being computed, or holding a result not yet picked up); when every request in flight
is one of them, nobody else is on the way and the batch runs at once, so a lone request, or a
set of clients that all wait for their answers, pays no wait.

With ``merge=False`` (dynamic batching off, for comparison) each request runs alone, in
chunks of at most ``max_batch_size`` of its own texts.

The queue is bounded in texts: when it is full, ``submit`` raises ``QueueFull`` at once (the
route answers 503 with Retry-After) instead of letting memory grow. An exception inside one
model call fails only the jobs of that call. The worker is supervised (supervision.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from service.scheduling.batches import BatchRunner, RunFn
from service.scheduling.queue import Job, SchedulerStopped, WorkQueue
from service.scheduling.supervision import start_supervised

log = logging.getLogger(__name__)


class BatchScheduler:
    def __init__(
        self,
        runners: dict[str, RunFn],
        max_batch_size: int = 32,
        max_wait_ms: float = 5.0,
        max_queue: int = 2048,
        length: Callable[[str], int] = len,
        on_batch: Callable[[str, int, float], None] | None = None,
        merge: bool = True,
        in_flight: Callable[[], int] | None = None,
        on_restart: Callable[[], None] | None = None,
    ) -> None:
        """`on_restart()`: told each time the worker's loop failed and starts again."""
        self.runners = runners
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.merge = merge
        self.in_flight = in_flight
        self.on_restart = on_restart
        self.restarts = 0  # worker loops started again after a failure
        self.queue = WorkQueue(max_queue)
        self.batches = BatchRunner(runners, max_batch_size, length, on_batch)
        self.taken: list[Job] = []  # the batch the worker runs now
        self.threads = [start_supervised("batcher", self._work, self._recover, self._restarted)]

    @property
    def queued(self) -> int:
        return self.queue.queued

    async def submit(
        self, model: str, texts: Sequence[str], options: dict[str, Any] | None = None, arrived: float | None = None
    ) -> list[Any]:
        """Run `texts` through `model` in some batch; returns their results in order. `options`
        (e.g. a beam size) are passed to the model's runner; only jobs with equal options are
        batched together. `arrived`: when the request this belongs to arrived (time.monotonic(),
        None: now), its place in the queue."""
        if model not in self.runners:
            raise KeyError(model)
        loop = asyncio.get_running_loop()
        job = Job(model, list(texts), loop.create_future(), loop, tuple(sorted((options or {}).items())))
        return await self.queue.run(job, arrived)

    def add_model(self, name: str, runner: RunFn, decoder: Any = None, stepper: Any = None) -> None:
        """A model loaded after start-up (service/registry.py) joins (whole batches: its runner only)."""
        with self.queue.cv:
            self.runners[name] = runner

    def remove_model(self, name: str) -> bool:
        """An unloaded model's runner leaves; False, and nothing changes, while work of it is queued
        or running."""
        with self.queue.cv:
            if any(j.model == name for j in [*self.queue.jobs, *self.taken]):
                return False
            self.runners.pop(name, None)
            return True

    def drain(self, seconds: float) -> None:
        """Shutting down (SIGTERM): the requests in flight keep submitting (a request may need
        several passes: pivot, protected spans) until `seconds` have passed; then what is left
        fails with `SchedulerStopped` (its callers answer 503) and new work is refused, instead of
        running past the process's grace period. The server accepts no new connections meanwhile."""
        self.queue.drain(seconds)

    def stop(self, timeout: float = 30.0) -> None:
        """Finish every job already accepted, then end the worker."""
        self.queue.stop()
        self.threads[0].join(timeout)

    # -- worker -----------------------------------------------------------------------------

    def _take(self) -> list[Job] | None:
        """Block until there is work; return the jobs of one batch (one model)."""
        q = self.queue
        with q.cv:
            while not q.jobs:
                if q.stopping:
                    return None
                q.cv.wait()
            if not self.merge:
                first = q.jobs[0]
                q.take(first)
                self.taken = [first]
            else:
                self.taken = q.take_batch(lambda job: True, self.max_batch_size, self.max_wait, True, self.in_flight)
            return self.taken

    def _work(self) -> None:
        while (jobs := self._take()) is not None:
            if self.queue.past_drain():
                for job in jobs:
                    job.resolve(exc=SchedulerStopped())
                with self.queue.cv:
                    self.queue.fail_queued()
                continue
            try:
                self.batches.run(jobs)
            except Exception as exc:  # noqa: BLE001 - past the model call (results, metrics): these jobs fail
                log.error("model %s: a batch of %d requests failed: %r", jobs[0].model, len(jobs), exc)
                for job in jobs:
                    job.resolve(exc=exc)
            finally:
                self.taken = []

    def _recover(self, exc: BaseException) -> None:
        """After the worker's loop failed: nothing to fail, `_work` answers the jobs it took
        whatever their batch raised."""

    def _restarted(self) -> None:
        self.restarts += 1
        if self.on_restart:
            self.on_restart()
