"""Whole batches: a list of jobs for one model and options run through the model's runner in
chunks of at most `max_batch_size` texts, shortest first (less padding), each job answered with
its own results, or with the failure of one of its chunks (a failed chunk fails its jobs only).
`run` runs them to the end; `steps` does the same through a stepper, one decoder step per `next`,
for a beam batch that advances beside the running batches (continuous.py)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any

from service.scheduling.queue import Job

log = logging.getLogger(__name__)

RunFn = Callable[..., Sequence[Any]]  # runner(texts, **options) -> one result per text
StepFn = Callable[..., Generator[None, None, Sequence[Any]]]  # the same, yielding between decoder steps
Item = tuple[Job, int, str]  # a job, a text's index in it, the text


class BatchRunner:
    """Runs whole batches of jobs; `on_batch(model, texts, seconds)` is told of every model call."""

    def __init__(
        self,
        runners: dict[str, RunFn],
        max_batch_size: int,
        length: Callable[[str], int] = len,
        on_batch: Callable[[str, int, float], None] | None = None,
    ) -> None:
        self.runners = runners
        self.max_batch_size = max_batch_size
        self.length = length
        self.on_batch = on_batch

    def chunks(self, jobs: list[Job], failed: dict[int, BaseException]) -> Iterator[list[Item]]:
        """Every text of `jobs` as (job, index, text), shortest first, in chunks of
        `max_batch_size`; a chunk leaves out the texts of jobs already `failed` (none left: skipped)."""
        items = sorted(((j, i, t) for j in jobs for i, t in enumerate(j.texts)), key=lambda it: self.length(it[2]))
        for start in range(0, len(items), self.max_batch_size):
            live = [it for it in items[start : start + self.max_batch_size] if id(it[0]) not in failed]
            if live:
                yield live

    def run(self, jobs: list[Job]) -> None:
        """Run `jobs` (one model, equal options) to the end and answer each."""
        model, options = jobs[0].model, dict(jobs[0].options)
        results: dict[int, list[Any]] = {id(j): [None] * len(j.texts) for j in jobs}
        failed: dict[int, BaseException] = {}
        for live in self.chunks(jobs, failed):
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

    def steps(
        self, jobs: list[Job], stepper: StepFn, on_dropped: Callable[[str, int, str], None] | None = None
    ) -> Generator[None, None, None]:
        """`run` through `stepper`: the same chunks, one decoder step per `next`; a chunk whose
        jobs were all abandoned stops at the next step (`on_dropped(model, texts, "running")`)."""
        model, options = jobs[0].model, dict(jobs[0].options)
        results: dict[int, list[Any]] = {id(j): [None] * len(j.texts) for j in jobs}
        failed: dict[int, BaseException] = {}
        for chunk in self.chunks(jobs, failed):
            if all(it[0].abandoned for it in chunk):
                continue
            steps = stepper([it[2] for it in chunk], **options)
            seconds, outputs = 0.0, None
            while True:
                t0 = time.perf_counter()
                try:
                    next(steps)
                except StopIteration as done:
                    outputs = done.value
                except Exception as exc:  # noqa: BLE001 - any model failure fails this chunk only
                    log.error("model %s failed on a batch of %d texts: %r", model, len(chunk), exc)
                    for it in chunk:
                        failed[id(it[0])] = exc
                seconds += time.perf_counter() - t0
                if outputs is not None or id(chunk[0][0]) in failed:
                    break
                yield
                if all(it[0].abandoned for it in chunk):  # nobody waits for these any more
                    steps.close()
                    if on_dropped:
                        on_dropped(model, len(chunk), "running")
                    break
            if outputs is not None:
                self._chunk_done(model, chunk, outputs, seconds, results)
        self._settle(jobs, results, failed)

    def _chunk_done(
        self, model: str, chunk: list[Item], outputs: Sequence[Any], seconds: float, results: dict[int, list[Any]]
    ) -> None:
        """A chunk's outputs into its jobs' `results` (by job id), and the batch metric."""
        if self.on_batch:
            self.on_batch(model, len(chunk), seconds)
        for (job, i, _), out in zip(chunk, outputs):
            results[id(job)][i] = out

    @staticmethod
    def _settle(jobs: list[Job], results: dict[int, list[Any]], failed: dict[int, BaseException]) -> None:
        """Answer each job: its results, or the failure of one of its chunks."""
        for job in jobs:
            if id(job) in failed:
                job.resolve(exc=failed[id(job)])
            else:
                job.resolve(result=results[id(job)])
