"""Dynamic batching: concurrent requests' texts are merged into model calls on one worker thread.

The event loop never runs a model: a route submits its texts and awaits a future. The worker
takes the oldest waiting job, waits up to ``max_wait_ms`` for more jobs for the same model (or
until ``max_batch_size`` texts are there), sorts the texts by length to avoid padding, runs the
model in chunks of at most ``max_batch_size`` and hands every job its own results. One worker
keeps one model call at a time on the cores, which on a small CPU is the fastest schedule.

The wait is skipped when nothing else can join: `in_flight` (the number of model requests the
server is handling, from the middleware) is compared with the callers waiting on the batcher
(queued, being computed, or holding a result not yet picked up); when every request in flight
is one of them, nobody else is on the way and the batch runs at once, so a lone request, or a
set of clients that all wait for their answers, pays no wait.

With ``merge=False`` (dynamic batching off, for comparison) each request runs alone, in
chunks of at most ``max_batch_size`` of its own texts.

The queue is bounded in texts: when it is full, ``submit`` raises ``QueueFull`` at once (the
route answers 503 with Retry-After) instead of letting memory grow. An exception inside one
model call fails only the jobs of that call.

The worker is **supervised** (`_supervise`): an exception that escapes its loop anyway (a bug
outside any one model call) fails the work it held (`_recover`), is logged, counted
(`on_restart`) and the loop starts again; a worker that ended would leave every later request
waiting for its deadline.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

# When the HTTP request being handled arrived (time.monotonic(); set by the middleware). A
# request's later passes (the second leg of a pivot, a retranslation for protected spans) queue
# in its arrival order, not behind everything that came since: the queue is kept in this order.
arrived: contextvars.ContextVar[float | None] = contextvars.ContextVar("transerve_arrived", default=None)

RunFn = Callable[..., Sequence[Any]]  # runner(texts, **options) -> one result per text

RESTART_PAUSE = 0.1  # seconds a worker waits after it failed before its loop starts again (no busy crash loop)


class QueueFull(Exception):
    """The batcher holds max_queue texts already."""


class TooBig(Exception):
    """One request alone is more than the queue may hold: it could never be accepted."""


class BatcherStopped(Exception):
    """The batcher is shutting down and takes no new work."""


@dataclass
class _Job:
    model: str
    texts: Sequence[str]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    options: tuple[tuple[str, Any], ...] = ()  # jobs share a model call only with equal options
    enqueued: float = field(default_factory=time.monotonic)
    arrived: float = 0.0  # when its HTTP request arrived (`arrived`): its place in the queue
    abandoned: bool = False  # its caller stopped waiting (deadline, disconnect): drop its work
    tokens: int = 0  # what it costs in the queue's token bound (scheduler.py)
    part: int = 0  # which part of a request cut into parts for several workers (scheduler.py)

    def key(self) -> tuple[str, tuple[tuple[str, Any], ...], int]:
        return self.model, self.options, self.part


class Batcher:
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
        """`on_restart()`: told each time a worker's loop failed and starts again (`_supervise`)."""
        self.runners = runners
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.length = length
        self.on_batch = on_batch
        self.merge = merge
        self.in_flight = in_flight
        self.on_restart = on_restart
        self.restarts = 0  # worker loops started again after a failure
        self._jobs: deque[_Job] = deque()
        self._queued = 0  # texts waiting
        self._callers = 0  # submit() calls not yet returned
        self._abandoned = 0  # jobs abandoned since the queue was last pruned of them
        self._drain_until: float | None = None  # set by drain(): past it, what is left fails
        self._cv = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._supervise, name="batcher", daemon=True)
        self._thread.start()

    @property
    def queued(self) -> int:
        return self._queued

    async def submit(self, model: str, texts: Sequence[str], options: dict[str, Any] | None = None) -> list[Any]:
        """Run `texts` through `model` in some batch; returns their results in order. `options`
        (e.g. a beam size) are passed to the model's runner; only jobs with equal options are
        batched together."""
        if model not in self.runners:
            raise KeyError(model)
        job = self._job(model, texts, options, asyncio.get_running_loop())
        with self._cv:
            if self._stopping or self._past_drain():
                raise BatcherStopped()
            if not self._room_for(job):
                raise QueueFull()
            self._enqueue(job)
            self._queued += len(job.texts)
            self._callers += 1
            self._cv.notify()
        try:
            return await job.future
        finally:
            with self._cv:
                self._callers -= 1
                # cancelled (the request's deadline, or its client left): nobody reads the result;
                # failed (`abandoned` already): what is left of it is not worth decoding either
                job.abandoned = job.abandoned or job.future.cancelled() or not job.future.done()
                self._abandoned += job.abandoned
                self._cv.notify()

    def _enqueue(self, job: _Job) -> None:
        """Queue `job` in its request's arrival order (holds the lock): a first pass goes at the
        end (the common case, one comparison); a later pass of an earlier request before the
        jobs of requests that arrived after it."""
        since = arrived.get()
        job.arrived = job.enqueued if since is None else min(since, job.enqueued)
        i = len(self._jobs)
        while i and self._jobs[i - 1].arrived > job.arrived:
            i -= 1
        self._jobs.insert(i, job)

    def _job(
        self, model: str, texts: Sequence[str], options: dict[str, Any] | None, loop: asyncio.AbstractEventLoop
    ) -> _Job:
        return _Job(model, list(texts), loop.create_future(), loop, tuple(sorted((options or {}).items())))

    def _room_for(self, job: _Job) -> bool:
        """Whether the queue can take `job` now (holds the lock; a True answer queues it)."""
        return self._queued + len(job.texts) <= self.max_queue

    def drain(self, seconds: float) -> None:
        """Shutting down (SIGTERM): the requests in flight keep submitting (a request may need
        several passes: pivot, protected spans) until `seconds` have passed; then what is left
        fails with `BatcherStopped` (its callers answer 503) and new work is refused, instead of
        running past the process's grace period. The server accepts no new connections meanwhile."""
        with self._cv:
            self._drain_until = time.monotonic() + seconds
            self._cv.notify()

    def _past_drain(self) -> bool:
        return self._drain_until is not None and time.monotonic() >= self._drain_until

    def _fail_queued(self) -> None:
        """Fail every queued job with BatcherStopped (holds the lock)."""
        for job in self._jobs:
            self._resolve(job, exc=BatcherStopped())
        self._jobs.clear()
        self._queued = 0

    def stop(self, timeout: float = 30.0) -> None:
        """Finish every job already accepted, then end the worker."""
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join(timeout)

    # -- worker -----------------------------------------------------------------------------

    def _take(self) -> list[_Job] | None:
        """Block until there is work; return the jobs of one batch (one model)."""
        with self._cv:
            while not self._jobs:
                if self._stopping:
                    return None
                self._cv.wait()
            return self._take_locked(lambda job: True, wait=True)

    def _take_locked(self, eligible: Callable[[_Job], bool], wait: bool) -> list[_Job]:
        """The jobs of one batch among the `eligible` ones (one must be queued), the first one's
        model and options; with `wait`, waits for more as the class docstring says. Holds the lock."""
        first = next(j for j in self._jobs if eligible(j))
        if not self.merge:
            self._jobs.remove(first)
            self._queued -= len(first.texts)
            return [first]
        deadline = first.enqueued + self.max_wait
        while wait and not self._stopping:
            waiting = sum(len(j.texts) for j in self._jobs if eligible(j) and j.key() == first.key())
            remaining = deadline - time.monotonic()
            if waiting >= self.max_batch_size or remaining <= 0:
                break
            if self.in_flight is not None and self.in_flight() <= self._callers:
                break  # every request in flight is already waiting here: nobody else is coming
            self._cv.wait(remaining)
        taken: list[_Job] = []
        kept: deque[_Job] = deque()
        size = 0
        for job in self._jobs:
            fits = not taken or size + len(job.texts) <= self.max_batch_size
            if eligible(job) and job.key() == first.key() and fits:
                taken.append(job)
                size += len(job.texts)
            else:
                kept.append(job)
        self._jobs = kept
        self._queued -= size
        return taken

    def _supervise(self, *args: Any) -> None:
        """A worker thread: `_work(*args)` until it returns (stopped); when it raises instead,
        the work it held fails (`_recover`: its callers answer 500 at once, not 504 at their
        deadline), the failure is logged and counted (`on_restart`), and the loop starts again
        after `RESTART_PAUSE`, with the queue as it is."""
        while True:
            try:
                self._work(*args)
                return
            except Exception as exc:  # a worker must outlive any bug in one turn
                name = threading.current_thread().name
                log.critical("batcher worker %s failed; restarting it", name, exc_info=exc)
                try:
                    self._recover(exc, *args)
                except Exception as again:  # noqa: BLE001 - the restart must not depend on it
                    log.critical("batcher worker %s: failing its work failed too: %r", name, again)
                self.restarts += 1
                if self.on_restart:
                    self.on_restart()
                time.sleep(RESTART_PAUSE)

    def _recover(self, exc: BaseException, *args: Any) -> None:
        """After the worker's loop failed: fail the work it held. Here that is none: `_work`
        answers the jobs it took whatever their batch raised."""

    def _work(self) -> None:
        while (jobs := self._take()) is not None:
            if self._past_drain():
                for job in jobs:
                    self._resolve(job, exc=BatcherStopped())
                with self._cv:
                    self._fail_queued()
                continue
            try:
                self._run(jobs)
            except Exception as exc:  # noqa: BLE001 - past the model call (results, metrics): these jobs fail
                log.error("model %s: a batch of %d requests failed: %r", jobs[0].model, len(jobs), exc)
                for job in jobs:
                    self._resolve(job, exc=exc)

    def _chunks(self, jobs: list[_Job], failed: dict[int, BaseException]) -> Iterator[list[tuple[_Job, int, str]]]:
        """Every text of `jobs` as (job, index, text), shortest first (less padding), in chunks of
        `max_batch_size`; a chunk leaves out the texts of jobs already `failed` (none left: skipped)."""
        items = sorted(((j, i, t) for j in jobs for i, t in enumerate(j.texts)), key=lambda it: self.length(it[2]))
        for start in range(0, len(items), self.max_batch_size):
            live = [it for it in items[start : start + self.max_batch_size] if id(it[0]) not in failed]
            if live:
                yield live

    def _run(self, jobs: list[_Job]) -> None:
        model, options = jobs[0].model, dict(jobs[0].options)
        results: dict[int, list[Any]] = {id(j): [None] * len(j.texts) for j in jobs}
        failed: dict[int, BaseException] = {}
        for live in self._chunks(jobs, failed):
            t0 = time.perf_counter()
            try:
                outputs = self.runners[model]([it[2] for it in live], **options)
            except Exception as exc:  # noqa: BLE001 - any model failure fails this batch only
                # the traceback is logged with each request's id by the route that waits for it
                log.error("model %s failed on a batch of %d texts: %r", model, len(live), exc)
                for it in live:
                    failed[id(it[0])] = exc
                continue
            self._chunk_done(model, live, outputs, time.perf_counter() - t0, results)
        self._settle(jobs, results, failed)

    def _chunk_done(self, model: str, chunk: list, outputs: Sequence[Any], seconds: float, results: dict) -> None:
        """A chunk's outputs into its jobs' `results` (by job id), and the batch metric."""
        if self.on_batch:
            self.on_batch(model, len(chunk), seconds)
        for (job, i, _), out in zip(chunk, outputs):
            results[id(job)][i] = out

    def _settle(self, jobs: list[_Job], results: dict, failed: dict) -> None:
        """Answer each job: its results, or the failure of one of its chunks."""
        for job in jobs:
            if id(job) in failed:
                self._resolve(job, exc=failed[id(job)])
            else:
                self._resolve(job, result=results[id(job)])

    @staticmethod
    def _resolve(job: _Job, result: Any = None, exc: BaseException | None = None) -> None:
        def settle() -> None:
            if job.future.done():  # the client gave up (timeout, disconnect)
                return
            if exc is not None:
                job.future.set_exception(exc)
            else:
                job.future.set_result(result)

        try:
            job.loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass
