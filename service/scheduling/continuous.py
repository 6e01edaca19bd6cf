"""Continuous (iteration-level) scheduling: translation sentences join and leave one running
decode batch per model and lane at every decoder step, and each request is answered as soon as
its own sentences are done.

Each worker thread loops; each turn, under the queue's lock, it

1. **prunes** the queue: a request whose caller stopped waiting (its deadline passed, its client
   disconnected: `Job.abandoned`) leaves it, and its rows leave the running batch before the
   next step (counted by `on_dropped`);
2. **admits** waiting sentences into its running batches as the admission policy plans
   (policy.py: fairness, length lanes, row and token budgets, the worker's share);
3. takes at most **one other batch**: classification (/detect, /classify), word alignment and
   translators without per-row decoder inputs run as whole batches (batches.py) between two
   decoder steps; beam search (beam_size > 1, alternatives) starts a **stepped batch**
   (`steppers`: one per model and worker at a time, chunks of ``max_batch_size`` sentences)
   that takes one decoder step per turn from then on, beside the running batches.

Then, without the lock: the newcomers are encoded and join, every running batch takes one step,
finished requests are answered, and the other batch (if any) runs. So a long translation stream
delays a classification by at most one decoder step per model, and a classification delays the
decoders by its own length; a beam search delays them by one of its steps per turn, and a beam
batch whose requests were all abandoned stops at its next step.

**Workers** (`workers`): each worker thread runs the loop above on running batches of its own,
all taking from the one queue, and each runs its onnxruntime calls on its share of the cores. A
worker admits its even share of the rows running and waiting (`policy.share`). Each worker's
running batches have the token budget (``max_batch_tokens``) and their own beam batch per model;
a beam request of several texts is cut into one part per worker (`submit`), so that alone at an
idle server it runs on every core too.

**Failures** stay with the requests involved: a sentence that cannot be placed in a lane fails
its request (the others are admitted), a failed encoder call the requests it encoded, a failed
step (or its answers) the requests with a row in that batch, a failed beam step its batch's
requests, a failed other batch its jobs; each caller gets the exception (the route answers 500
with a request id) and the worker goes on. Anything else that escapes a worker's turn fails every
request with work on that worker (`_recover`) and its loop starts again (supervision.py, counted).

Greedy requests (no options, or beam_size 1 and one hypothesis) are decoded continuously; a
request for scores gets them from the same running batch. The queue is bounded in sentences
(``max_queue``) and in source tokens (``max_queue_tokens``): beyond either, `QueueFull`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from service.runtime.continuous import DecodeBatch, Row
from service.runtime.engine import DecodingEngine
from service.scheduling import policy
from service.scheduling.batches import BatchRunner, RunFn, StepFn
from service.scheduling.policy import Lane, Sentence
from service.scheduling.queue import Job, SchedulerStopped, WorkQueue
from service.scheduling.supervision import start_supervised

log = logging.getLogger(__name__)


@dataclass
class Request(Job):
    """A job whose sentences are decoded in running batches."""

    costs: list[int] = field(default_factory=list)  # each text's source tokens
    ids: list[list[int]] = field(default_factory=list)  # each text's source ids (pieces + </s>)
    admitted: int = 0  # texts handed to a running batch (or answered at once: blank ones)
    order: list[int] = field(default_factory=list)  # the order they are handed in: longest source first
    sentences: list[Sentence] | None = None  # each text in `order`, placed in its lane (at its first turn)
    remaining: int = 0  # texts not finished yet
    results: list[Any] = field(default_factory=list)
    scored: bool = False  # answer (text, score, length) lists, as translate_nbest does
    first_in: float = 0.0  # when its first sentence joined a running batch (time.monotonic)
    all_in: float = 0.0  # when its last one did

    def left(self) -> tuple[int, int]:
        return len(self.texts) - self.admitted, sum(self.costs[i] for i in self.order[self.admitted :])


Joins = dict[Lane, list[tuple[Request, int]]]


@dataclass
class Worker:
    """One worker thread's own running batches and beam batches under way."""

    index: int
    batches: dict[Lane, DecodeBatch] = field(default_factory=dict)
    stepping: list[tuple[Generator[None, None, None], list[Job]]] = field(default_factory=list)
    # this turn's work not yet in a batch: the sentences admitted and the other batch taken; a
    # failed turn fails them too (`ContinuousScheduler._recover`)
    joins: Joins = field(default_factory=dict)
    other: list[Job] = field(default_factory=list)

    @property
    def running(self) -> int:
        return sum(len(b) for b in list(self.batches.values()))


class ContinuousScheduler:
    def __init__(
        self,
        runners: dict[str, RunFn],
        decoders: Mapping[str, DecodingEngine],
        max_batch_size: int = 32,
        max_wait_ms: float = 5.0,
        max_queue: int = 2048,
        max_batch_tokens: int = 8192,
        max_queue_tokens: int = 65536,
        lanes: Sequence[int] = (24,),
        order: str = "hybrid",
        cost: Callable[[str, str], int] | None = None,
        on_batch: Callable[[str, int, float], None] | None = None,
        on_dropped: Callable[[str, int, str], None] | None = None,
        on_done: Callable[[str, int, float, float, float], None] | None = None,
        in_flight: Callable[[], int] | None = None,
        steppers: dict[str, StepFn] | None = None,
        workers: int = 1,
        on_restart: Callable[[], None] | None = None,
    ) -> None:
        """`decoders`: the translators (runtime/translator.Translator with per-row inputs) whose
        greedy requests are decoded continuously; `runners` run everything else. `cost(model,
        text)` is a text's source tokens (default: its length in characters). `lanes`: source
        lengths (tokens) that split each model's sentences into running batches of their own.
        A translator with target vocabularies (runtime/vocab.py) has a set of lanes per target
        language too: a batch's rows share its decoder, and each language has its own.
        `steppers[model](texts, **options)`: the model's runner for beam search as a generator
        that yields between decoder steps and returns the results (Translator.translate_nbest_steps):
        such a batch advances one step per worker turn beside the running batches. `workers`:
        worker threads, each with running batches of its own (see the module docstring).
        `on_restart()`: told each time a worker's loop failed and starts again."""
        self.runners = runners
        # the caller's dict itself: a model loaded later joins it (add_model), and the caller's
        # `cost` sees it there
        self.decoders = cast(dict[str, DecodingEngine], decoders)
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.max_batch_tokens = max_batch_tokens
        self.lanes = sorted(lanes)
        self.order = order
        self.cost = cost or (lambda model, text: len(text))
        self.on_dropped = on_dropped
        self.on_done = on_done  # (model, sentences, queue s, admission s, decode s) of each answered request
        self.in_flight = in_flight
        self.steppers = steppers or {}
        self.on_restart = on_restart
        self.restarts = 0  # worker loops started again after a failure
        # each model's target languages (None: the full vocabulary), each with its set of lanes
        self.targets = {n: [None, *(sorted(e.target_vocab.ids) if e.target_vocab else [])] for n, e in decoders.items()}
        # a model's lanes of the full vocabulary from the start; a target language's at first use
        # (then a full set of lanes does not mean that nothing can join: a new language's can)
        self.fixed_lanes = all(len(t) == 1 for t in self.targets.values())
        self.workers = [
            Worker(
                w,
                {
                    Lane(n, None, k): DecodeBatch(e)
                    for n, e in decoders.items()
                    if len(self.targets[n]) == 1
                    for k in range(len(self.lanes) + 1)
                },
            )
            for w in range(max(1, workers))
        ]
        self.queue = WorkQueue(max_queue, max_queue_tokens)
        self.batches = BatchRunner(runners, max_batch_size, on_batch=on_batch)
        self.on_batch = on_batch
        self._finishing = threading.Lock()  # a request's sentences may finish on two workers at once
        self.threads = [self._start(w) for w in self.workers]

    # -- callers ----------------------------------------------------------------------------

    @property
    def queued(self) -> int:
        return self.queue.queued

    @property
    def queued_tokens(self) -> int:
        return self.queue.queued_tokens

    @property
    def running(self) -> int:
        """Rows in the running batches (every worker's)."""
        return sum(w.running for w in self.workers)

    async def submit(
        self, model: str, texts: Sequence[str], options: dict[str, Any] | None = None, arrived: float | None = None
    ) -> list[Any]:
        """Run `texts` through `model`; returns their results in order. `options` (e.g. a beam
        size) are passed to the model's runner; only jobs with equal options are batched
        together. `arrived`: when the request this belongs to arrived (time.monotonic(), None:
        now), its place in the queue. A beam request (stepped) of several texts with several
        workers is cut into one part per worker (texts of neighbouring lengths together),
        queued as jobs that no batch merges (`Job.part`), so that each worker steps one part
        beside its running batches: a beam request alone at an idle server runs on every core.
        Its answer is the parts' in the texts' order (a text's n-best does not depend on its
        batch-mates)."""
        if len(self.workers) == 1 or len(texts) < 2 or not self._stepped_request(model, options):
            return await self._submit(model, texts, options, arrived)
        # the whole request against the queue's token bound, as unsplit (each part's _job costs its
        # texts again: a tokenization, next to a beam search's decoder steps)
        self.queue.check_size(sum(self.cost(model, t) for t in texts))
        parts = policy.parts([len(t) for t in texts], len(self.workers))

        async def part(k: int, indices: list[int]) -> list[Any]:
            return await self._submit(model, [texts[i] for i in indices], options, arrived, part=k)

        tasks = [asyncio.ensure_future(part(k, p)) for k, p in enumerate(parts)]
        try:
            done = await asyncio.gather(*tasks)
        except BaseException:  # a part refused (queue full) or failed, or the caller left: drop the others
            for task in tasks:
                task.cancel()
            raise
        results: list[Any] = [None] * len(texts)
        for indices, out in zip(parts, done):
            for i, r in zip(indices, out):
                results[i] = r
        return results

    async def _submit(
        self, model: str, texts: Sequence[str], options: dict[str, Any] | None, arrived: float | None, part: int = 0
    ) -> list[Any]:
        if model not in self.runners:
            raise KeyError(model)
        job = self._job(model, texts, options, asyncio.get_running_loop(), part)
        return await self.queue.run(job, arrived)

    def _stepped_request(self, model: str, options: dict[str, Any] | None) -> bool:
        """Whether a request of `model` with `options` runs stepped beside the running batches
        (beam search, n-best)."""
        return model in self.steppers and not self.continuous(model, options) and not (options or {}).get("align")

    def continuous(self, model: str, options: dict[str, Any] | None) -> bool:
        o = options or {}
        return (
            model in self.decoders
            and o.get("beam_size", 1) == 1
            and o.get("n_best", 1) == 1
            and not o.get("align")
            and o.get("shortlist", True)  # the running batches decode with it where the bundle has one
        )

    def _job(
        self,
        model: str,
        texts: Sequence[str],
        options: dict[str, Any] | None,
        loop: asyncio.AbstractEventLoop,
        part: int,
    ) -> Job:
        continuous = self.continuous(model, options)
        # A continuous request is tokenized here, in the caller's thread, once: the worker,
        # which every request waits on, only encodes and decodes.
        ids = self.decoders[model].encode(texts) if continuous else []
        costs = [len(x) for x in ids] if continuous else [self.cost(model, t) for t in texts]
        tokens = sum(costs)
        self.queue.check_size(tokens)
        if not continuous:
            opts = tuple(sorted((options or {}).items()))
            return Job(model, list(texts), loop.create_future(), loop, opts, tokens=tokens, part=part)
        return Request(
            model,
            list(texts),
            loop.create_future(),
            loop,
            tokens=tokens,
            costs=costs,
            ids=ids,
            remaining=len(costs),
            # longest first: a request is done when its longest sentence is, and that one takes the
            # most steps (admitted last when rows are short, it would finish last by that much)
            order=sorted(range(len(costs)), key=lambda i: -costs[i]),
            results=[None] * len(costs),
            scored=bool(options),
        )

    def add_model(
        self, name: str, runner: RunFn, decoder: DecodingEngine | None = None, stepper: StepFn | None = None
    ) -> None:
        """A model loaded after start-up (service/registry.py, max_loaded_models) joins: its
        runner, and a translator's lanes (as the constructor makes them) and beam stepper."""
        with self.queue.cv:
            self.runners[name] = runner
            if stepper is not None:
                self.steppers[name] = stepper
            if decoder is None:
                return
            self.decoders[name] = decoder
            targets = self.targets[name] = [None, *(sorted(decoder.target_vocab.ids) if decoder.target_vocab else [])]
            self.fixed_lanes = self.fixed_lanes and len(targets) == 1
            if len(targets) == 1:
                for w in self.workers:
                    w.batches.update((Lane(name, None, k), DecodeBatch(decoder)) for k in range(len(self.lanes) + 1))

    def remove_model(self, name: str) -> bool:
        """An unloaded model leaves: its runner, stepper and every worker's lanes of it (their
        engines with them). False, and nothing changes, while any work of it is queued or on a
        worker (rows, a beam batch, this turn's admissions or other batch: a request that left
        may still have some)."""
        with self.queue.cv:
            if any(j.model == name for j in self.queue.jobs):
                return False
            for w in self.workers:
                if (
                    any(len(b) for lane, b in list(w.batches.items()) if lane.model == name)
                    or any(jobs[0].model == name for _, jobs in list(w.stepping))
                    or any(lane.model == name for lane in list(w.joins))
                    or any(j.model == name for j in list(w.other))
                ):
                    return False
            self.runners.pop(name, None)
            self.decoders.pop(name, None)
            self.steppers.pop(name, None)
            self.targets.pop(name, None)
            for w in self.workers:  # in place: a worker's turn outside the lock reads a copy of its lanes
                for lane in [lane for lane in w.batches if lane.model == name]:
                    del w.batches[lane]
            return True

    def drain(self, seconds: float) -> None:
        """Shutting down (SIGTERM): the requests in flight keep submitting until `seconds` have
        passed; then what is left, queued or running, fails with `SchedulerStopped` (503)."""
        self.queue.drain(seconds)

    def stop(self, timeout: float = 30.0) -> None:
        """Finish every job already accepted, then end the workers."""
        self.queue.stop()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    # -- a worker's turn ----------------------------------------------------------------------

    def _work(self, w: Worker) -> None:
        q = self.queue
        while True:
            with q.cv:
                while not q.jobs and not w.running and not w.stepping:
                    if q.stopping:
                        return
                    q.cv.wait()
                self._prune()
                if q.past_drain():  # shutting down and out of time: what is left gets 503
                    self._fail_all(w, SchedulerStopped())
                    continue
                joins = self._admit(w)
                other: list[Job] = []
                if any(self._other(w, j) for j in q.jobs):
                    idle = not w.running and not joins and not w.stepping
                    eligible = lambda j: self._other(w, j)  # noqa: E731
                    other = w.other = q.take_batch(eligible, self.max_batch_size, self.max_wait, idle, self.in_flight)
                if not (joins or other or w.running or w.stepping):
                    # what waits is another worker's to take (its share, policy.share): wait for a change
                    q.cv.wait(self.max_wait or 0.005)
                    continue
                if q.jobs and len(self.workers) > 1:
                    q.cv.notify()  # work left: an idle worker may take it
            for key in list(joins):
                self._join(w, key, joins[key])
                del joins[key]
            for key, batch in list(w.batches.items()):
                if batch:
                    self._advance(w, key, batch)
            if other and self._stepped(other[0]):
                w.stepping.append((self.batches.steps(other, self.steppers[other[0].model], self.on_dropped), other))
                other = w.other = []
            self._step_beams(w)
            if other:
                try:
                    self.batches.run(other)
                except Exception as exc:  # noqa: BLE001 - past the model call (BatchRunner.run catches those)
                    log.error("model %s: a batch of %d requests failed: %r", other[0].model, len(other), exc)
                    for job in other:
                        self._fail(job, exc)
                w.other = []

    def _prune(self) -> None:
        """Drop the queued work of abandoned requests (holds the lock)."""
        self.queue.prune(self.on_dropped)

    def _fail_all(self, w: Worker, exc: BaseException) -> None:
        """Shutting down, out of time: fail what is queued, running and stepping (holds the lock)."""
        self.queue.fail_queued()
        for key in w.batches:
            self._fail_batch(w, key, exc)
        for steps, jobs in w.stepping:
            steps.close()
            for job in jobs:
                job.resolve(exc=exc)
        w.stepping.clear()

    def _step_beams(self, w: Worker) -> None:
        """Each beam batch of worker `w` one decoder step."""
        for entry in list(w.stepping):
            try:
                next(entry[0])
            except StopIteration:
                w.stepping.remove(entry)
            except Exception as exc:  # noqa: BLE001 - past the model call (BatchRunner.steps catches those)
                log.error("model %s: a beam batch failed: %r", entry[1][0].model, exc)
                w.stepping.remove(entry)
                for job in entry[1]:
                    self._fail(job, exc)

    def _stepped(self, job: Job) -> bool:
        """Whether `job` runs stepped beside the running batches (`_stepped_request`)."""
        return self._stepped_request(job.model, dict(job.options))

    def _other(self, w: Worker, job: Job) -> bool:
        """Whether `job` may be taken as worker `w`'s other batch this turn: not a sentence of the
        running batches, and, stepped, its model has no stepped batch under way on `w` (one per
        model and worker: the memory of one beam batch; the others wait in the queue, in order)."""
        if isinstance(job, Request):
            return False
        return not self._stepped(job) or all(jobs[0].model != job.model for _, jobs in w.stepping)

    # -- admission ----------------------------------------------------------------------------

    def _admit(self, w: Worker) -> Joins:
        """Sentences to join worker `w`'s running batches now, as the admission policy plans them
        (holds the lock); requests all of whose sentences are admitted leave the queue."""
        q = self.queue
        joins: Joins = {}
        w.joins = joins  # the turn's admissions so far, should the turn fail (`_recover`)
        if self.fixed_lanes and all(len(b) >= self.max_batch_size for b in w.batches.values()):
            return joins  # every lane is full: nothing can join (the common case under load)
        now = time.monotonic()
        requests = [j for j in q.jobs if isinstance(j, Request)]
        held = {m: self._hold(w, m, requests, now) for m in self.decoders}
        waiting = [j for j in requests if not held[j.model]]
        pending = sum(len(j.texts) - j.admitted for j in waiting)
        budget = policy.Budget(
            self.max_batch_size,
            self.max_batch_tokens,
            policy.share([x.running for x in self.workers], w.running, pending),
        )
        ready = [
            policy.Waiting(j, sentences[j.admitted :], j.arrived)
            for j in waiting
            if not j.abandoned and (sentences := self._sentences(j)) is not None
        ]
        plan = policy.plan(ready, w.batches, budget, self.order, now)
        self._open_lanes(w, plan.joins)
        joins.update(plan.joins)
        now = time.monotonic()
        for job, sentence in plan.admitted:
            self._admitted(job, sentence, now)
        q.jobs = deque(j for j in q.jobs if not (isinstance(j, Request) and j.admitted == len(j.texts)))
        return joins

    def _sentences(self, job: Request) -> list[Sentence] | None:
        """`job`'s sentences, each placed in its lane (at its first turn); None when that failed:
        then the request fails (`_fail`) and leaves the queue at the next prune, and the others
        are admitted as if it had not come (holds the lock)."""
        if job.sentences is None:
            try:
                job.sentences = policy.describe(
                    job.order, lambda i: not job.texts[i].strip(), lambda i: self._place(job, i)
                )
            except Exception as exc:  # noqa: BLE001 - e.g. its target language is not the model's: it fails alone
                log.error("model %s failed to admit a sentence: %r", job.model, exc)
                self._fail(job, exc)
                self.queue.abandoned += 1
                return None
        return job.sentences

    def _place(self, job: Request, i: int) -> tuple[Lane, policy.Row]:
        """Sentence `i` of `job`: its lane (target language, source length) and row."""
        engine = self.decoders[job.model]
        src = min(job.costs[i], engine.max_len)
        target = engine.target_of(job.ids[i])
        self.targets[job.model].index(target)  # ValueError for a language it has no lanes for
        return Lane(job.model, target, policy.length_lane(self.lanes, src)), (src, engine.output_limit(src))

    def _open_lanes(self, w: Worker, joins: Joins) -> None:
        """Worker `w`'s running batch for each lane that sentences join (made at first use: a target
        language's lanes when a sentence into it first comes); when one cannot be made (its
        decoder), the requests with sentences for it fail."""
        for lane in list(joins):
            try:
                self.batch(w, lane)
            except Exception as exc:  # noqa: BLE001 - its lane's decoder could not be made: they fail alone
                log.error("model %s failed to admit a sentence: %r", lane.model, exc)
                for job in {id(j): j for j, _ in joins.pop(lane)}.values():
                    self._fail(job, exc)
                    self.queue.abandoned += 1

    def _admitted(self, job: Request, sentence: Sentence, now: float) -> None:
        """The queue's books for one sentence admitted; a blank one is answered at once (holds the lock)."""
        try:
            if not job.admitted:
                job.first_in = now
            job.admitted += 1
            if job.admitted == len(job.texts):
                job.all_in = now
            self.queue.queued -= 1
            self.queue.queued_tokens -= job.costs[sentence.index]
            if sentence.lane is None:  # blank: answered as it is, no decoding
                self._finish_one(job, sentence.index, "" if not job.scored else [("", 0.0, 0)])
        except Exception as exc:  # noqa: BLE001 - its answer could not be given: it fails alone
            log.error("model %s failed to admit a sentence: %r", job.model, exc)
            self._fail(job, exc)
            self.queue.abandoned += 1

    def _hold(self, w: Worker, model: str, requests: list[Request], now: float) -> bool:
        """Whether `model`'s waiting sentences wait one more step to join together (`policy.hold`)."""
        jobs = [j for j in requests if j.model == model]
        return policy.hold(
            [len(b) for lane, b in w.batches.items() if lane.model == model],
            self.max_batch_size,
            sum(len(j.texts) - j.admitted for j in jobs),
            [now - j.enqueued for j in jobs],
            self.max_wait,
        )

    def engine(self, lane: Lane) -> Any:
        """The translator (or its view of one target vocabulary) that `lane` decodes with."""
        return self.decoders[lane.model].view(lane.target)  # None: itself

    def batch(self, w: Worker, lane: Lane) -> DecodeBatch:
        """Worker `w`'s running batch of `lane` (made on first use)."""
        found = w.batches.get(lane)
        if found is None:
            found = w.batches[lane] = DecodeBatch(self.engine(lane))
        return found

    # -- running batches ----------------------------------------------------------------------

    def _join(self, w: Worker, lane: Lane, items: list[tuple[Request, int]]) -> None:
        items = [(job, i) for job, i in items if not job.abandoned]
        if not items:
            return
        try:
            sources = [job.ids[i] for job, i in items]
            for scored in (False, True):
                part = [(k, it) for k, it in enumerate(items) if it[0].scored == scored]
                if part:
                    w.batches[lane].add([sources[k] for k, _ in part], [it for _, it in part], scored=scored)
        except Exception as exc:  # noqa: BLE001 - the encoder failed: these requests fail
            log.error("model %s failed to encode %d sentences: %r", lane.model, len(items), exc)
            for job in {id(j): j for j, _ in items}.values():
                self._fail(job, exc)

    def _advance(self, w: Worker, lane: Lane, batch: DecodeBatch) -> None:
        model = lane.model
        gone = batch.drop(lambda tag: tag[0].abandoned)
        if gone and self.on_dropped:
            self.on_dropped(model, len(gone), "running")
        if not batch:
            return
        rows = batch.rows
        t0 = time.perf_counter()
        try:
            done = batch.step()
            if self.on_batch:
                self.on_batch(model, len(rows), time.perf_counter() - t0)
            if done:
                self._deliver(model, done)
        except Exception as exc:  # noqa: BLE001 - a failed step (or its answers) fails the requests in the batch
            log.error("model %s failed on a decode step of %d rows: %r", model, len(rows), exc)
            for job in {id(r.tag[0]): r.tag[0] for r in rows}.values():  # finished rows' too: unanswered
                self._fail(job, exc)
            w.batches[lane] = DecodeBatch(batch.engine)

    def _deliver(self, model: str, rows: list[Row]) -> None:
        engine = self.decoders.get(model)
        if engine is None:  # unloaded since its step (remove_model): nobody waits for these rows
            return
        texts = [engine.text.decode_one(row.tokens) for row in rows]  # a list call costs a thread pool
        if engine.on_tokens:
            engine.on_tokens(sum(len(row.tokens) for row in rows))
        for row, text in zip(rows, texts):
            job, i = row.tag
            self._finish_one(job, i, [(text, row.score, row.length)] if job.scored else text)

    def _finish_one(self, job: Request, i: int, result: Any) -> None:
        with self._finishing:
            job.results[i] = result
            job.remaining -= 1
            last = job.remaining == 0
        if last and not job.abandoned:
            job.resolve(result=job.results)
            if self.on_done:  # where its time went: waiting, joining sentence by sentence, decoding
                now = time.monotonic()
                self.on_done(
                    job.model, len(job.texts), job.first_in - job.enqueued, job.all_in - job.first_in, now - job.all_in
                )

    # -- failures -----------------------------------------------------------------------------

    def _fail(self, job: Job, exc: BaseException) -> None:
        job.abandoned = True  # its other rows leave at the next step
        job.resolve(exc=exc)

    def _recover(self, exc: BaseException, w: Worker) -> None:
        """After worker `w`'s turn failed outside any one request's work (supervision.supervise):
        every request with work on `w` fails (rows in its running batches, its beam batches,
        the sentences admitted and the other batch taken this turn: their state is not to be
        trusted), and `w` starts again with empty batches; the queue is left as it is."""
        jobs: dict[int, Job] = {}
        for batch in w.batches.values():
            jobs.update((id(r.tag[0]), r.tag[0]) for r in batch.rows)
        for steps, stepped in w.stepping:
            with contextlib.suppress(Exception):  # its own cleanup may fail as its step did
                steps.close()
            jobs.update((id(j), j) for j in stepped)
        for items in w.joins.values():
            jobs.update((id(j), j) for j, _ in items)
        jobs.update((id(j), j) for j in w.other)
        with self.queue.cv:
            for job in jobs.values():
                self._fail(job, exc)
            self.queue.abandoned += len(jobs)  # what is left of them in the queue leaves at the next prune
            w.batches = {lane: DecodeBatch(b.engine) for lane, b in w.batches.items()}
            w.stepping, w.joins, w.other = [], {}, []

    def _restarted(self) -> None:
        self.restarts += 1
        if self.on_restart:
            self.on_restart()

    def _start(self, w: Worker) -> threading.Thread:
        """Worker `w`'s supervised thread ("batcher" for the first, as the whole-batch scheduler's)."""
        name = "batcher" if w.index == 0 else f"batcher-{w.index}"
        return start_supervised(name, lambda: self._work(w), lambda exc: self._recover(exc, w), self._restarted)

    def _fail_batch(self, w: Worker, lane: Lane, exc: BaseException) -> None:
        """Fail every request with a row in worker `w`'s running batch `lane`, and start it afresh."""
        for job in {id(r.tag[0]): r.tag[0] for r in w.batches[lane].rows}.values():
            self._fail(job, exc)
        w.batches[lane] = DecodeBatch(self.engine(lane))
