"""Continuous (iteration-level) batching: translation sentences join and leave one running decode
batch per model at every decoder step, and each request is answered as soon as its own
sentences are done.

The worker thread loops; each turn, under the lock, it

1. **prunes** the queue: a request whose caller stopped waiting (its deadline passed, its client
   disconnected: `_Job.abandoned`) leaves it, and its rows leave the running batch before the
   next step (counted by `on_dropped`);
2. **admits** waiting sentences into each model's running batch: requests of one or two
   sentences left in turn first (so a one-sentence request is not queued behind every sentence
   of the paragraphs that came first), then longer requests in arrival order (the queue's order:
   a request's later passes keep its place), while the batch has fewer than ``max_batch_size``
   rows and fewer than ``max_batch_tokens`` tokens (sources + cache slots, runtime/continuous.py);
   (`order`: also plain round robin, fifo, shortest-first);
3. takes at most **one other batch**: classification (/detect, /classify), word alignment and
   translators without per-row decoder inputs run as whole batches, as in batcher.py, between
   two decoder steps; beam search (beam_size > 1, alternatives) starts a **stepped batch**
   (`steppers`: one per model at a time, chunks of ``max_batch_size`` sentences) that takes one
   decoder step per turn from then on, beside the running batches.

Then, without the lock: the newcomers are encoded and join, every running batch takes one step,
finished requests are answered, and the other batch (if any) runs. So a long translation stream
delays a classification by at most one decoder step per model (~5-30 ms here), and a
classification delays the decoders by its own length; a beam search delays them by one of its
steps per turn (before session 14 it ran whole between two steps: one greedy sentence beside a
stream of 32-text requests with alternatives waited p50 762 ms instead of 9; stepped, 74 ms), and a
beam batch whose requests were all abandoned stops at its next step.

**Workers** (`workers`, TRANSERVE_DECODE_WORKERS; 2 by default on a CPU of 2 or more cores):
each worker thread runs the loop above on running batches of its own, all taking from the one
queue, and each runs its onnxruntime calls on its share of the cores (settings.intra_threads).
At the small matrices of a decoder step, onnxruntime's intra-op threads barely add up (on 2
vCPUs one 32-row step: 3.0 ms on 1 thread, 3.2 on 2), while two steps on one thread each do
(1.3-1.5x the rows per second), and the encoder calls, classification batches and beam steps of
one worker run beside the other's steps too. A worker admits its even share of the rows running
and waiting (at least one when it runs none): a paragraph that arrives at an idle server is
decoded on every worker, and no worker takes rows while another has fewer. Each worker's running
batches have the token budget (``max_batch_tokens``) and their own beam batch per model; a beam
request of several texts is cut into one part per worker (`submit`), so that alone at an idle
server it runs on every core too (32 texts with 3 alternatives: 0.125 s, whole on one worker 0.22 s).

**Failures** stay with the requests involved: a sentence whose admission raises fails its request
(the others are admitted), a failed encoder call the requests it encoded, a failed step (or its
answers) the requests with a row in that batch, a failed beam step its batch's requests, a failed
other batch its jobs; each caller gets the exception (the route answers 500 with a request id)
and the worker goes on. Anything else that escapes a worker's turn fails every request with work
on that worker (`_recover`) and its loop starts again (`Batcher._supervise`, counted).

Greedy requests (no options, or beam_size 1 and one hypothesis) are decoded continuously; a
request for scores gets them from the same running batch. The queue is bounded in sentences
(``max_queue``) and in source tokens (``max_queue_tokens``): beyond either, `QueueFull`.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import contextvars
import logging
import math
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

from service.batcher import Batcher, BatcherStopped, RunFn, TooBig, _Job
from service.runtime.continuous import DecodeBatch, Row

log = logging.getLogger(__name__)

# which part of a request cut for several workers the job being made is (ContinuousBatcher.submit)
_part: contextvars.ContextVar[int] = contextvars.ContextVar("transerve_part", default=0)


@dataclass
class _Request(_Job):
    """A job whose sentences are decoded in a running batch."""

    costs: list[int] = field(default_factory=list)  # each text's source tokens
    ids: list[list[int]] = field(default_factory=list)  # each text's source ids (pieces + </s>)
    admitted: int = 0  # texts handed to the running batch (or answered at once: blank ones)
    order: list[int] = field(default_factory=list)  # the order they are handed in: longest source first
    remaining: int = 0  # texts not finished yet
    results: list[Any] = field(default_factory=list)
    scored: bool = False  # answer (text, score, length) lists, as translate_nbest does
    first_in: float = 0.0  # when its first sentence joined a running batch (time.monotonic)
    all_in: float = 0.0  # when its last one did


@dataclass
class _Worker:
    """One worker thread's own running batches (lane key -> batch) and beam batches under way."""

    index: int
    batches: dict[tuple[str, int], DecodeBatch] = field(default_factory=dict)
    stepping: list[tuple[Generator[None, None, None], list[_Job]]] = field(default_factory=list)
    # this turn's work not yet in a batch: the sentences admitted (lane key -> (request, index)) and
    # the other batch taken; a failed turn fails them too (`ContinuousBatcher._recover`)
    joins: dict[tuple[str, int], list[tuple[_Request, int]]] = field(default_factory=dict)
    other: list[_Job] = field(default_factory=list)

    @property
    def running(self) -> int:
        return sum(len(b) for b in list(self.batches.values()))


class ContinuousBatcher(Batcher):
    def __init__(
        self,
        runners: dict[str, RunFn],
        decoders: dict[str, Any],
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
        steppers: dict[str, Callable[..., Generator[None, None, Sequence[Any]]]] | None = None,
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
        self.decoders = decoders
        self.lanes = sorted(lanes)
        self.order = order
        # lane k of model m: target language targets[m][k // per_target], length lane k % per_target
        self.per_target = len(self.lanes) + 1
        self.targets = {
            n: [None, *(sorted(e.target_vocab.ids) if getattr(e, "target_vocab", None) else [])]
            for n, e in decoders.items()
        }
        # a model's lanes of the full vocabulary from the start; a target language's at first use
        # (then a full set of lanes does not mean that nothing can join: a new language's can)
        self.fixed_lanes = all(len(t) == 1 for t in self.targets.values())
        self.workers = [
            _Worker(
                w,
                {
                    (n, k): DecodeBatch(e)
                    for n, e in decoders.items()
                    if len(self.targets[n]) == 1
                    for k in range(self.per_target)
                },
            )
            for w in range(max(1, workers))
        ]
        self._finishing = threading.Lock()  # a request's sentences may finish on two workers at once
        self.max_batch_tokens = max_batch_tokens
        self.max_queue_tokens = max_queue_tokens
        self.cost = cost or (lambda model, text: len(text))
        self.on_dropped = on_dropped
        self.on_done = on_done  # (model, sentences, queue s, admission s, decode s) of each answered request
        self._queued_tokens = 0
        self.steppers = steppers or {}
        super().__init__(
            runners,
            max_batch_size,
            max_wait_ms,
            max_queue,
            on_batch=on_batch,
            merge=True,
            in_flight=in_flight,
            on_restart=on_restart,
        )  # starts the first worker's thread (Batcher._thread); the others' here
        self._threads = [self._thread] + [
            threading.Thread(target=self._supervise, args=(w,), name=f"batcher-{w.index}", daemon=True)
            for w in self.workers[1:]
        ]
        for thread in self._threads[1:]:
            thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish every job already accepted, then end the workers."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    async def submit(self, model: str, texts: Sequence[str], options: dict[str, Any] | None = None) -> list[Any]:
        """`Batcher.submit`; a beam request (stepped) of several texts with several workers is cut
        into one part per worker (texts of neighbouring lengths together), queued as jobs that
        no batch merges (`_Job.part`), so that each worker steps one part beside its running
        batches: a beam request alone at an idle server runs on every core. Its answer is the
        parts' in the texts' order (a text's n-best does not depend on its batch-mates)."""
        if len(self.workers) == 1 or len(texts) < 2 or not self._stepped_request(model, options):
            return await super().submit(model, texts, options)
        # the whole request against the queue's token bound, as unsplit (each part's _job costs its
        # texts again: a tokenization, next to a beam search's decoder steps)
        self._check_size(sum(self.cost(model, t) for t in texts))
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        size = math.ceil(len(texts) / len(self.workers))
        parts = [order[i : i + size] for i in range(0, len(order), size)]

        async def part(k: int, indices: list[int]) -> list[Any]:
            _part.set(k)  # this task's own context: read by _job
            return await Batcher.submit(self, model, [texts[i] for i in indices], options)

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

    def _stepped_request(self, model: str, options: dict[str, Any] | None) -> bool:
        """Whether a request of `model` with `options` runs stepped beside the running batches
        (beam search, n-best)."""
        return model in self.steppers and not self.continuous(model, options) and not (options or {}).get("align")

    def _check_size(self, tokens: int) -> None:
        """TooBig for a request of `tokens` source tokens that the queue could never hold."""
        if tokens > self.max_queue_tokens:
            raise TooBig(f"request of {tokens} source tokens; at most {self.max_queue_tokens} can be queued")

    def continuous(self, model: str, options: dict[str, Any] | None) -> bool:
        o = options or {}
        return model in self.decoders and o.get("beam_size", 1) == 1 and o.get("n_best", 1) == 1 and not o.get("align")

    @property
    def queued_tokens(self) -> int:
        return self._queued_tokens

    @property
    def running(self) -> int:
        """Rows in the running batches (every worker's)."""
        return sum(w.running for w in self.workers)

    def _job(
        self, model: str, texts: Sequence[str], options: dict[str, Any] | None, loop: asyncio.AbstractEventLoop
    ) -> _Job:
        continuous = self.continuous(model, options)
        # A continuous request is tokenized here, in the caller's thread, once: the worker,
        # which every request waits on, only encodes and decodes (tokenizing there took a
        # tenth of its time at saturation, BENCHMARKS.md).
        ids = self.decoders[model].encode(texts) if continuous else []
        costs = [len(x) for x in ids] if continuous else [self.cost(model, t) for t in texts]
        tokens = sum(costs)
        self._check_size(tokens)
        if not continuous:
            job = super()._job(model, texts, options, loop)
            job.tokens = tokens
            job.part = _part.get()
            return job
        return _Request(
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

    def _room_for(self, job: _Job) -> bool:
        if not super()._room_for(job) or self._queued_tokens + job.tokens > self.max_queue_tokens:
            return False
        self._queued_tokens += job.tokens
        return True

    # -- worker -----------------------------------------------------------------------------

    def _work(self, w: _Worker | None = None) -> None:
        w = w or self.workers[0]
        while True:
            with self._cv:
                while not self._jobs and not w.running and not w.stepping:
                    if self._stopping:
                        return
                    self._cv.wait()
                self._prune()
                if self._past_drain():  # shutting down and out of time: what is left gets 503
                    self._fail_queued()
                    for key in w.batches:
                        self._fail_batch(w, key, BatcherStopped())
                    for steps, jobs in w.stepping:
                        steps.close()
                        for job in jobs:
                            self._resolve(job, exc=BatcherStopped())
                    w.stepping.clear()
                    continue
                joins = self._admit(w)
                other: list[_Job] = []
                if any(self._other(w, j) for j in self._jobs):
                    idle = not w.running and not joins and not w.stepping
                    other = w.other = self._take_locked(lambda j: self._other(w, j), wait=idle)
                    self._queued_tokens -= sum(j.tokens for j in other)
                if not (joins or other or w.running or w.stepping):
                    # what waits is another worker's to take (its share, module docstring): wait for a change
                    self._cv.wait(self.max_wait or 0.005)
                    continue
                if self._jobs and len(self.workers) > 1:
                    self._cv.notify()  # work left: an idle worker may take it
            for key in list(joins):
                self._join(w, key, joins[key])
                del joins[key]
            for key, batch in list(w.batches.items()):
                if batch:
                    self._advance(w, key, batch)
            if other and self._stepped(other[0]):
                w.stepping.append((self._run_steps(other), other))
                other = w.other = []
            for entry in list(w.stepping):  # each beam batch one decoder step
                try:
                    next(entry[0])
                except StopIteration:
                    w.stepping.remove(entry)
                except Exception as exc:  # noqa: BLE001 - past the model call (_run_steps catches those)
                    log.error("model %s: a beam batch failed: %r", entry[1][0].model, exc)
                    w.stepping.remove(entry)
                    for job in entry[1]:
                        self._fail(job, exc)
            if other:
                try:
                    self._run(other)
                except Exception as exc:  # noqa: BLE001 - past the model call (_run catches those)
                    log.error("model %s: a batch of %d requests failed: %r", other[0].model, len(other), exc)
                    for job in other:
                        self._fail(job, exc)
                w.other = []

    def _stepped(self, job: _Job) -> bool:
        """Whether `job` runs stepped beside the running batches (`_stepped_request`)."""
        return self._stepped_request(job.model, dict(job.options))

    def _other(self, w: _Worker, job: _Job) -> bool:
        """Whether `job` may be taken as worker `w`'s other batch this turn: not a sentence of the
        running batches, and, stepped, its model has no stepped batch under way on `w` (one per
        model and worker: the memory of one beam batch; the others wait in the queue, in order)."""
        if isinstance(job, _Request):
            return False
        return not self._stepped(job) or all(jobs[0].model != job.model for _, jobs in w.stepping)

    def _run_steps(self, jobs: list[_Job]) -> Generator[None, None, None]:
        """`Batcher._run` for a stepped model: the same chunks of `max_batch_size` texts, each
        run by the model's stepper, one decoder step per `next`; a chunk whose requests were all
        abandoned stops at the next step (counted by `on_dropped`)."""
        model, options = jobs[0].model, dict(jobs[0].options)
        results: dict[int, list[Any]] = {id(j): [None] * len(j.texts) for j in jobs}
        failed: dict[int, BaseException] = {}
        for chunk in self._chunks(jobs, failed):
            if all(it[0].abandoned for it in chunk):
                continue
            steps = self.steppers[model]([it[2] for it in chunk], **options)
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
                    if self.on_dropped:
                        self.on_dropped(model, len(chunk), "running")
                    break
            if outputs is not None:
                self._chunk_done(model, chunk, outputs, seconds, results)
        self._settle(jobs, results, failed)

    def _prune(self) -> None:
        """Drop the queued work of abandoned requests (holds the lock)."""
        if not self._abandoned:
            return
        self._abandoned = 0
        kept = type(self._jobs)()
        for job in self._jobs:
            if not job.abandoned:
                kept.append(job)
                continue
            if isinstance(job, _Request):
                left = len(job.texts) - job.admitted
                self._queued_tokens -= sum(job.costs[i] for i in job.order[job.admitted :])
            else:
                left = len(job.texts)
                self._queued_tokens -= job.tokens
            self._queued -= left
            if self.on_dropped and left:
                self.on_dropped(job.model, left, "queue")
        self._jobs = kept

    def _admit(self, w: _Worker) -> dict[tuple[str, int], list[tuple[_Request, int]]]:
        """Sentences to join worker `w`'s running batches now, one per waiting request in turn,
        each into its length lane, within the lane's rows, `w`'s token budget for the model and
        `w`'s share of the rows (holds the lock)."""
        joins: dict[tuple[str, int], list[tuple[_Request, int]]] = defaultdict(list)
        w.joins = joins  # the turn's admissions so far, should the turn fail (`_recover`)
        if self.fixed_lanes and all(len(b) >= self.max_batch_size for b in w.batches.values()):
            return joins  # every lane is full: nothing can join (the common case under load)
        held = {m: self._hold(w, m) for m in self.decoders}
        waiting = [j for j in self._jobs if isinstance(j, _Request) and not held[j.model]]
        share = self._share(w, waiting)
        planned: dict[tuple[str, int], list[tuple[int, int]]] = defaultdict(list)  # (source, limit) of newcomers
        full: set[tuple[str, int]] = set()

        def admit_one(job: _Request) -> bool:
            """Admit `job`'s next sentence; False when its lane has no room (or `w` its share), or
            when its admission failed: then the request fails (`_fail`) and leaves the queue at
            the next prune, and the others are admitted as if it had not come."""
            if job.abandoned:
                return False
            try:
                return admit(job)
            except Exception as exc:  # noqa: BLE001 - e.g. its lane's decoder could not be made: it fails alone
                log.error("model %s failed to admit a sentence: %r", job.model, exc)
                self._fail(job, exc)
                self._abandoned += 1
                return False

        def admit(job: _Request) -> bool:
            m, i = job.model, job.order[job.admitted]
            if job.texts[i].strip():
                if sum(len(p) for p in planned.values()) >= share:
                    return False
                engine = self.decoders[m]
                src = min(job.costs[i], engine.max_len)
                target = self.targets[m].index(engine.target_of(job.ids[i]))  # 0: the full vocabulary
                key = (m, target * self.per_target + bisect.bisect_left(self.lanes, src))
                if key in full:
                    return False
                row = (src, engine.output_limit(src))
                rows = len(self.batch(w, key)) + len(planned[key])
                tokens = sum(
                    b.bound([*planned[k], *([row] if k == key else [])]) for k, b in w.batches.items() if k[0] == m
                )
                if rows and (rows >= self.max_batch_size or tokens > self.max_batch_tokens):
                    full.add(key)
                    return False
                joins[key].append((job, i))
                planned[key].append(row)
            if not job.admitted:
                job.first_in = time.monotonic()
            job.admitted += 1
            if job.admitted == len(job.texts):
                job.all_in = time.monotonic()
            self._queued -= 1
            self._queued_tokens -= job.costs[i]
            if not job.texts[i].strip():  # blank: answered as it is, no decoding
                self._finish_one(job, i, "" if not job.scored else [("", 0.0, 0)])
            return True

        if self.order == "hybrid":
            # Requests of at most two sentences left take turns first; then the longer ones in
            # arrival order, each taking every row it can: round robin among paragraphs spreads
            # each over many steps beside all the others (measured: BENCHMARKS.md, section 6).
            short = [j for j in waiting if len(j.texts) - j.admitted <= 2]
            while short:
                short = [j for j in short if admit_one(j) and j.admitted < len(j.texts)]
            for job in waiting:
                while job.admitted < len(job.texts) and admit_one(job):
                    pass
        elif self.order == "round-robin":
            while waiting:
                waiting = [j for j in waiting if admit_one(j) and j.admitted < len(j.texts)]
        else:
            if self.order == "shortest-first":  # fewest sentences left first; over a second waiting: first
                now = time.monotonic()
                waiting.sort(key=lambda j: (now - j.arrived < 1.0, len(j.texts) - j.admitted, j.arrived))
            for job in waiting:  # fifo: in arrival order, every sentence of a request before the next's
                while job.admitted < len(job.texts) and admit_one(job):
                    pass
        # requests all of whose sentences are in a running batch (or answered) leave the queue
        self._jobs = deque(j for j in self._jobs if not (isinstance(j, _Request) and j.admitted == len(j.texts)))
        return joins

    def _share(self, w: _Worker, waiting: list[_Request]) -> int:
        """The most sentences worker `w` admits this turn: all it has room for when it is the only
        worker; else its even share of the rows running on every worker and waiting (at least one
        when it runs none), so that a paragraph arriving at an idle server is decoded on every
        worker, each on its own cores, and no worker takes rows while another has fewer."""
        if len(self.workers) == 1:
            return 1 << 30
        rows = sum(x.running for x in self.workers)
        pending = sum(len(j.texts) - j.admitted for j in waiting)
        share = math.ceil((rows + pending) / len(self.workers)) - w.running
        return max(share, 0 if w.running else 1)

    def engine(self, key: tuple[str, int]) -> Any:
        """The translator (or its view of one target vocabulary) that lane `key` decodes with."""
        model, k = key
        return self.decoders[model].view(self.targets[model][k // self.per_target])  # None: itself

    def batch(self, w: _Worker, key: tuple[str, int]) -> DecodeBatch:
        """Worker `w`'s running batch of lane `key` (made on first use: a target language's lanes
        when a sentence into it first comes)."""
        found = w.batches.get(key)
        if found is None:
            found = w.batches[key] = DecodeBatch(self.engine(key))
        return found

    def _hold(self, w: _Worker, model: str) -> bool:
        """Whether `model`'s waiting sentences wait one more step, to join together: an encoder
        call for one or two sentences costs a fifth of a decoder step. They wait only while every
        lane is at least half full, fewer than 4 wait, and none has waited `max_wait_ms` (holds
        the lock)."""
        lanes = [b for (m, _), b in w.batches.items() if m == model]
        if any(2 * len(b) < self.max_batch_size for b in lanes):
            return False
        jobs = [j for j in self._jobs if isinstance(j, _Request) and j.model == model]
        if sum(len(j.texts) - j.admitted for j in jobs) >= 4:
            return False
        return all(time.monotonic() - j.enqueued < self.max_wait for j in jobs)

    def _join(self, w: _Worker, key: tuple[str, int], items: list[tuple[_Request, int]]) -> None:
        model = key[0]
        items = [(job, i) for job, i in items if not job.abandoned]
        if not items:
            return
        try:
            sources = [job.ids[i] for job, i in items]
            for scored in (False, True):
                part = [(k, it) for k, it in enumerate(items) if it[0].scored == scored]
                if part:
                    w.batches[key].add([sources[k] for k, _ in part], [it for _, it in part], scored=scored)
        except Exception as exc:  # noqa: BLE001 - the encoder failed: these requests fail
            log.error("model %s failed to encode %d sentences: %r", model, len(items), exc)
            for job in {id(j): j for j, _ in items}.values():
                self._fail(job, exc)

    def _advance(self, w: _Worker, key: tuple[str, int], batch: DecodeBatch) -> None:
        model = key[0]
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
            w.batches[key] = DecodeBatch(batch.engine)

    def _deliver(self, model: str, rows: list[Row]) -> None:
        engine = self.decoders[model]
        texts = [engine.text.decode_one(row.tokens) for row in rows]  # a list call costs a thread pool
        if engine.on_tokens:
            engine.on_tokens(sum(len(row.tokens) for row in rows))
        for row, text in zip(rows, texts):
            job, i = row.tag
            self._finish_one(job, i, [(text, row.score, row.length)] if job.scored else text)

    def _finish_one(self, job: _Request, i: int, result: Any) -> None:
        with self._finishing:
            job.results[i] = result
            job.remaining -= 1
            last = job.remaining == 0
        if last and not job.abandoned:
            self._resolve(job, result=job.results)
            if self.on_done:  # where its time went: waiting, joining sentence by sentence, decoding
                now = time.monotonic()
                self.on_done(
                    job.model, len(job.texts), job.first_in - job.enqueued, job.all_in - job.first_in, now - job.all_in
                )

    def _fail(self, job: _Job, exc: BaseException) -> None:
        job.abandoned = True  # its other rows leave at the next step
        self._resolve(job, exc=exc)

    def _recover(self, exc: BaseException, w: _Worker | None = None) -> None:
        """After worker `w`'s turn failed outside any one request's work (`Batcher._supervise`):
        every request with work on `w` fails (rows in its running batches, its beam batches,
        the sentences admitted and the other batch taken this turn: their state is not to be
        trusted), and `w` starts again with empty batches; the queue is left as it is."""
        w = w or self.workers[0]
        jobs: dict[int, _Job] = {}
        for batch in w.batches.values():
            jobs.update((id(r.tag[0]), r.tag[0]) for r in batch.rows)
        for steps, stepped in w.stepping:
            with contextlib.suppress(Exception):  # its own cleanup may fail as its step did
                steps.close()
            jobs.update((id(j), j) for j in stepped)
        for items in w.joins.values():
            jobs.update((id(j), j) for j, _ in items)
        jobs.update((id(j), j) for j in w.other)
        with self._cv:
            for job in jobs.values():
                self._fail(job, exc)
            self._abandoned += len(jobs)  # what is left of them in the queue leaves at the next prune
            w.batches = {key: DecodeBatch(b.engine) for key, b in w.batches.items()}
            w.stepping, w.joins, w.other = [], {}, []

    def _fail_batch(self, w: _Worker, key: tuple[str, int], exc: BaseException) -> None:
        """Fail every request with a row in worker `w`'s running batch `key`, and start that batch afresh."""
        for job in {id(r.tag[0]): r.tag[0] for r in w.batches[key].rows}.values():
            self._fail(job, exc)
        w.batches[key] = DecodeBatch(self.engine(key))
