"""The queue both schedulers take their work from: jobs in their requests' arrival order, bounded
in texts (and, for the continuous scheduler, in source tokens), with the bookkeeping of callers
waiting, jobs abandoned, draining and stopping. One lock (`cv`) guards it; a scheduler's workers
hold it while they take work.

A request's later passes (the second leg of a pivot, a retranslation for protected spans) queue
in its arrival order, not behind everything that came since: `put` is given the arrival time of
the request the job belongs to (the caller's business: the queue knows nothing of HTTP).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


class QueueFull(Exception):
    """The queue holds max_queue texts (or max_queue_tokens source tokens) already."""


class TooBig(Exception):
    """One request alone is more than the queue may hold: it could never be accepted."""


class SchedulerStopped(Exception):
    """The scheduler is shutting down and takes no new work."""


Options = tuple[tuple[str, Any], ...]


@dataclass
class Job:
    """One submission: `texts` for `model` with runner `options`; its caller awaits `future`."""

    model: str
    texts: Sequence[str]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    options: Options = ()  # jobs share a model call only with equal options
    enqueued: float = field(default_factory=time.monotonic)
    arrived: float = 0.0  # when its request arrived (`WorkQueue.put`): its place in the queue
    abandoned: bool = False  # its caller stopped waiting (deadline, disconnect): drop its work
    tokens: int = 0  # what it costs in the queue's token bound
    part: int = 0  # which part of a request cut into parts for several workers

    def key(self) -> tuple[str, Options, int]:
        """Jobs of one key may share a model call."""
        return self.model, self.options, self.part

    def left(self) -> tuple[int, int]:
        """(texts, source tokens) of it still in the queue."""
        return len(self.texts), self.tokens

    def resolve(self, result: Any = None, exc: BaseException | None = None) -> None:
        """Answer its caller (from any thread); nothing when the caller gave up already."""

        def settle() -> None:
            if self.future.done():  # the client gave up (timeout, disconnect)
                return
            if exc is not None:
                self.future.set_exception(exc)
            else:
                self.future.set_result(result)

        try:
            self.loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass


class WorkQueue:
    """Jobs waiting for a worker, in arrival order, within `max_queue` texts and
    `max_queue_tokens` source tokens (None: no token bound)."""

    def __init__(self, max_queue: int, max_queue_tokens: int | None = None) -> None:
        self.max_queue = max_queue
        self.max_queue_tokens = max_queue_tokens
        self.jobs: deque[Job] = deque()
        self.queued = 0  # texts waiting
        self.queued_tokens = 0  # their source tokens
        self.callers = 0  # submissions not yet returned (queued, being computed, holding a result)
        self.abandoned = 0  # jobs abandoned since the queue was last pruned of them
        self.drain_until: float | None = None  # set by drain(): past it, what is left fails
        self.stopping = False
        self.cv = threading.Condition()

    def check_size(self, tokens: int) -> None:
        """TooBig for a request of `tokens` source tokens that the queue could never hold."""
        if self.max_queue_tokens is not None and tokens > self.max_queue_tokens:
            raise TooBig(f"request of {tokens} source tokens; at most {self.max_queue_tokens} can be queued")

    async def run(self, job: Job, arrived: float | None = None) -> Any:
        """Queue `job` (`put`) and wait for its answer; the queue's books are kept whatever the
        caller's fate (answered, failed, cancelled)."""
        self.put(job, arrived)
        try:
            return await job.future
        finally:
            with self.cv:
                self.callers -= 1
                # cancelled (the request's deadline, or its client left): nobody reads the result;
                # failed (`abandoned` already): what is left of it is not worth decoding either
                job.abandoned = job.abandoned or job.future.cancelled() or not job.future.done()
                self.abandoned += job.abandoned
                self.cv.notify()

    def put(self, job: Job, arrived: float | None = None) -> None:
        """Queue `job` in its request's arrival order (`arrived`, time.monotonic(); None: now): a
        first pass goes at the end (the common case, one comparison); a later pass of an earlier
        request before the jobs of requests that arrived after it. Raises SchedulerStopped or
        QueueFull instead when it cannot be taken."""
        with self.cv:
            if self.stopping or self.past_drain():
                raise SchedulerStopped()
            if not self._room_for(job):
                raise QueueFull()
            self.queued_tokens += job.tokens
            job.arrived = job.enqueued if arrived is None else min(arrived, job.enqueued)
            i = len(self.jobs)
            while i and self.jobs[i - 1].arrived > job.arrived:
                i -= 1
            self.jobs.insert(i, job)
            self.queued += len(job.texts)
            self.callers += 1
            self.cv.notify()

    def _room_for(self, job: Job) -> bool:
        if self.queued + len(job.texts) > self.max_queue:
            return False
        return self.max_queue_tokens is None or self.queued_tokens + job.tokens <= self.max_queue_tokens

    def take(self, job: Job) -> None:
        """Take `job` out of the queue whole (holds the lock)."""
        self.jobs.remove(job)
        self.queued -= len(job.texts)
        self.queued_tokens -= job.tokens

    def take_batch(
        self,
        eligible: Callable[[Job], bool],
        max_size: int,
        max_wait: float,
        wait: bool,
        in_flight: Callable[[], int] | None = None,
    ) -> list[Job]:
        """The jobs of one batch among the `eligible` ones (one must be queued): the first one's
        key, at most `max_size` texts (the first job whole whatever its size). With `wait`, waits
        up to `max_wait` seconds after the first was queued for batch-mates, unless `max_size`
        texts are there or every request in flight (`in_flight()`) is already a caller here:
        nobody else is coming. Holds the lock."""
        first = next(j for j in self.jobs if eligible(j))
        deadline = first.enqueued + max_wait
        while wait and not self.stopping:
            waiting = sum(len(j.texts) for j in self.jobs if eligible(j) and j.key() == first.key())
            remaining = deadline - time.monotonic()
            if waiting >= max_size or remaining <= 0:
                break
            if in_flight is not None and in_flight() <= self.callers:
                break  # every request in flight is already waiting here: nobody else is coming
            self.cv.wait(remaining)
        taken: list[Job] = []
        kept: deque[Job] = deque()
        size = 0
        for job in self.jobs:
            fits = not taken or size + len(job.texts) <= max_size
            if eligible(job) and job.key() == first.key() and fits:
                taken.append(job)
                size += len(job.texts)
            else:
                kept.append(job)
        self.jobs = kept
        self.queued -= size
        self.queued_tokens -= sum(j.tokens for j in taken)
        return taken

    def prune(self, on_dropped: Callable[[str, int, str], None] | None = None) -> None:
        """Drop the queued work of abandoned jobs, telling `on_dropped(model, texts, "queue")`
        (holds the lock)."""
        if not self.abandoned:
            return
        self.abandoned = 0
        kept: deque[Job] = deque()
        for job in self.jobs:
            if not job.abandoned:
                kept.append(job)
                continue
            left, tokens = job.left()
            self.queued_tokens -= tokens
            self.queued -= left
            if on_dropped and left:
                on_dropped(job.model, left, "queue")
        self.jobs = kept

    def drain(self, seconds: float) -> None:
        """Shutting down: past `seconds` from now, what is queued fails and new work is refused."""
        with self.cv:
            self.drain_until = time.monotonic() + seconds
            self.cv.notify()

    def past_drain(self) -> bool:
        return self.drain_until is not None and time.monotonic() >= self.drain_until

    def fail_queued(self) -> None:
        """Fail every queued job with SchedulerStopped (holds the lock)."""
        for job in self.jobs:
            job.resolve(exc=SchedulerStopped())
        self.jobs.clear()
        self.queued = 0

    def stop(self) -> None:
        """No new work; the workers finish what was accepted, then end."""
        with self.cv:
            self.stopping = True
            self.cv.notify_all()
