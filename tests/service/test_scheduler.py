"""The continuous scheduler's threaded loop (service/scheduling/continuous.py) on a tiny real
translator: requests are answered as soon as their own sentences are done, sentences that join a
running batch translate as they do alone, abandoned work is dropped at the next step, the budgets
hold, classification runs between decoder steps, and overload is refused at once. The admission
policy's decisions are tested without threads in test_admission.py."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from service.runtime.bundle import load_manifest
from service.runtime.sessions import resolve_providers
from service.runtime.translator import Translator
from service.scheduling import ContinuousScheduler, QueueFull, SchedulerStopped, TooBig

WORDS = "der hund spielt mit der katze im park und die frau läuft rot blau ein mann das kind".split()
SHORT = "ein mann"


@pytest.fixture(scope="module")
def engine(model_dir):
    bundle = model_dir / "de-en"
    return Translator(bundle, load_manifest(bundle), resolve_providers("cpu"), threads=1, variant="int8-static")


def paragraph(n: int, seed: int = 0) -> list[str]:
    return [" ".join(WORDS[(seed + k + j) % len(WORDS)] for j in range(6 + k % 5)) for k in range(n)]


def slowed(engine, seconds: float):
    """Each decoder step of `engine` takes at least `seconds` (so that arrivals land mid-way)."""
    real = engine.run_step

    def step(*args):
        time.sleep(seconds)
        return real(*args)

    return step


WORKERS = [1]  # worker threads of the schedulers `make` builds: every test runs with one and with two


@pytest.fixture(autouse=True, params=[1, 2], ids=["1-worker", "2-workers"])
def workers(request):
    WORKERS[0] = request.param
    yield request.param
    WORKERS[0] = 1


def make(engine, runners=None, **kw) -> ContinuousScheduler:
    def translate(texts, **options):  # the app's runner: beam requests run as whole batches
        return engine.translate_nbest(texts, **options) if options else engine.translate(texts)

    return ContinuousScheduler(
        {"t": translate, **(runners or {})},
        {"t": engine},
        cost=lambda m, t: engine.n_tokens(t),
        **{"workers": WORKERS[0], **kw},
    )


def test_sentences_joining_a_running_batch_translate_as_alone(engine, monkeypatch):
    texts = paragraph(12) + [SHORT]
    alone = [engine.translate([t])[0] for t in texts]
    monkeypatch.setattr(engine, "run_step", slowed(engine, 0.002))
    b = make(engine, max_batch_size=4)  # few rows: sentences join as others leave

    async def main():
        first = asyncio.ensure_future(b.submit("t", texts[:6]))
        await asyncio.sleep(0.01)  # the others arrive while the first six are decoding
        rest = [b.submit("t", [t]) for t in texts[6:]]
        return [*(await first), *[r[0] for r in await asyncio.gather(*rest)]]

    out = asyncio.run(main())
    b.stop()
    assert out == alone


def test_a_short_request_is_answered_before_the_long_one_it_joined(engine, monkeypatch):
    monkeypatch.setattr(engine, "run_step", slowed(engine, 0.003))
    b = make(engine)
    finished: list[str] = []

    async def main():
        async def one(name, texts):
            out = await b.submit("t", texts)
            finished.append(name)
            return out

        long = asyncio.ensure_future(one("long", paragraph(16)))
        await asyncio.sleep(0.02)
        short = await one("short", [SHORT])
        await long
        return short

    short = asyncio.run(main())
    b.stop()
    assert finished == ["short", "long"]
    assert short == engine.translate([SHORT])


def test_scored_requests_get_the_greedy_scores_from_the_running_batch(engine):
    texts = paragraph(3) + [""]
    b = make(engine)

    async def main():
        return await asyncio.gather(b.submit("t", texts, {"beam_size": 1, "n_best": 1}), b.submit("t", texts))

    scored, plain = asyncio.run(main())
    b.stop()
    want = engine.translate_nbest(texts, beam_size=1)
    assert [s[0][0] for s in scored] == [w[0][0] for w in want] == plain
    assert [s[0][2] for s in scored] == [w[0][2] for w in want]
    assert [s[0][1] for s in scored] == pytest.approx([w[0][1] for w in want], abs=1e-3)
    assert plain[-1] == "" and scored[-1] == [("", 0.0, 0)]


def test_beam_requests_run_beside_the_running_batch(engine):
    texts = paragraph(3)
    b = make(engine)

    async def main():
        return await asyncio.gather(b.submit("t", texts, {"beam_size": 3, "n_best": 2}), b.submit("t", texts))

    beam, greedy = asyncio.run(main())
    b.stop()
    assert beam == engine.translate_nbest(texts, beam_size=3, n_best=2)
    assert greedy == engine.translate(texts)


def test_abandoned_requests_leave_the_queue_and_the_running_batch(engine, monkeypatch, workers):
    monkeypatch.setattr(engine, "run_step", slowed(engine, 0.005))
    dropped: list[tuple[str, int, str]] = []
    b = make(engine, max_batch_size=8, on_dropped=lambda m, n, where: dropped.append((m, n, where)))

    async def main():
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(b.submit("t", paragraph(24)), 0.05)  # 8 running, 16 queued
        t0 = time.monotonic()
        out = await b.submit("t", [SHORT])
        return out, time.monotonic() - t0

    out, seconds = asyncio.run(main())
    b.stop()
    assert out == engine.translate([SHORT])
    where = {w: n for _, n, w in dropped}
    assert where.get("queue") == 24 - 8 * workers and where.get("running", 0) >= 1  # 8 rows on each worker
    assert sum(where.values()) <= 24
    assert seconds < 2.0  # not behind the abandoned paragraph
    assert b.running == 0 and b.queued == 0 and b.queued_tokens == 0


def test_the_running_batch_stays_within_its_row_and_token_budget(engine, monkeypatch):
    seen: list[int] = []
    b = make(engine, max_batch_size=5, max_batch_tokens=200, on_batch=lambda m, rows, s: seen.append(rows))
    widths: list[int] = []
    for batch in b.workers[0].batches.values():

        def step(real=batch.step):
            widths.append(sum(x.tokens for x in b.workers[0].batches.values()))  # every lane of the model
            return real()

        monkeypatch.setattr(batch, "step", step)

    async def main():
        return await asyncio.gather(*[b.submit("t", paragraph(4, seed=s)) for s in range(6)])

    out = asyncio.run(main())
    b.stop()
    assert [o for r in out for o in r] == engine.translate([t for s in range(6) for t in paragraph(4, seed=s)])
    assert max(seen) <= 5 and max(seen) > 1
    assert max(widths) <= 200


def test_classification_runs_between_decoder_steps(engine, monkeypatch):
    monkeypatch.setattr(engine, "run_step", slowed(engine, 0.003))
    b = make(engine, runners={"c": lambda texts: [len(t) for t in texts]})
    order: list[str] = []

    async def main():
        async def one(name, model, texts):
            out = await b.submit(model, texts)
            order.append(name)
            return out

        long = asyncio.ensure_future(one("translate", "t", paragraph(16)))
        await asyncio.sleep(0.02)
        got = await one("classify", "c", ["abc", "de"])
        await long
        return got

    assert asyncio.run(main()) == [3, 2]
    b.stop()
    assert order == ["classify", "translate"]


def test_the_queue_is_bounded_in_tokens_and_one_request_beyond_it_is_too_big(engine, monkeypatch):
    gate = threading.Event()
    real = engine.run_step

    def held(*args):
        gate.wait(10)
        return real(*args)

    monkeypatch.setattr(engine, "run_step", held)
    b = make(engine, max_batch_size=1, max_queue_tokens=60)

    async def main():
        with pytest.raises(TooBig, match="at most 60"):
            await b.submit("t", paragraph(8))
        first = asyncio.ensure_future(b.submit("t", [SHORT]))  # running (held)
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(b.submit("t", paragraph(3)))  # queued
        await asyncio.sleep(0.05)
        with pytest.raises(QueueFull):
            await b.submit("t", paragraph(3, seed=4))
        gate.set()
        return await first, await second

    first, second = asyncio.run(main())
    b.stop()
    assert first == engine.translate([SHORT]) and second == engine.translate(paragraph(3))


def test_a_failed_step_fails_the_requests_in_the_batch_and_the_next_ones_work(engine, monkeypatch):
    real = engine.run_step
    failing = {"on": True}

    def step(*args):
        if failing["on"]:
            raise RuntimeError("simulated engine failure")
        return real(*args)

    monkeypatch.setattr(engine, "run_step", step)
    b = make(engine)

    async def main():
        with pytest.raises(RuntimeError, match="simulated"):
            await b.submit("t", paragraph(2))
        failing["on"] = False
        return await b.submit("t", [SHORT])

    assert asyncio.run(main()) == engine.translate([SHORT])
    b.stop()


def test_each_answered_request_reports_where_its_time_went(engine, monkeypatch):
    monkeypatch.setattr(engine, "run_step", slowed(engine, 0.002))
    seen: list[tuple] = []
    b = make(engine, max_batch_size=2, on_done=lambda *a: seen.append(a))

    async def main():
        await asyncio.gather(b.submit("t", paragraph(5)), b.submit("t", [SHORT]))

    asyncio.run(main())
    b.stop()
    by_size = {s[1]: s for s in seen}
    assert sorted(by_size) == [1, 5] and all(s[0] == "t" for s in seen)
    _, _, queue, admission, decode = by_size[5]
    # two rows for five sentences: its last sentence joined well after its first, then decoded
    assert queue >= 0 and admission > 0.004 and decode > 0.002


def stepped(engine, **kw) -> ContinuousScheduler:
    """The app's wiring: beam requests stepped beside the running batches."""
    return make(engine, steppers={"t": lambda texts, **o: engine.translate_nbest_steps(texts, **o)}, **kw)


def paced(engine, seconds: float, steps: list | None = None, closed: list | None = None):
    """`engine.translate_nbest_steps` with each decoder step taking at least `seconds`; counts its
    steps into steps[0] and notes in `closed` when it was closed mid-way."""
    real = engine.translate_nbest_steps

    def run(*args, **kw):
        gen = real(*args, **kw)
        try:
            while True:
                try:
                    next(gen)
                except StopIteration as done:
                    return done.value
                if steps is not None:
                    steps[0] += 1
                time.sleep(seconds)
                yield
        except GeneratorExit:
            if closed is not None:
                closed.append(1)
            raise

    return run


def test_a_stepped_beam_batch_gives_what_the_whole_run_gives(engine):
    texts = paragraph(7) + ["", SHORT]
    b = stepped(engine, max_batch_size=4)  # chunks of 4 texts, each stepped to its end

    async def main():
        return await asyncio.gather(
            b.submit("t", texts, {"beam_size": 4, "n_best": 3}), b.submit("t", texts[:2], {"beam_size": 2})
        )

    four, two = asyncio.run(main())
    b.stop()
    assert four == engine.translate_nbest(texts, beam_size=4, n_best=3)
    assert two == engine.translate_nbest(texts[:2], beam_size=2)


def test_greedy_requests_are_answered_while_a_beam_batch_steps(engine, monkeypatch):
    # Before (a beam batch run whole between two decoder steps), every greedy request waited for
    # the whole beam search at each of its steps; stepped, it needs only its own steps.
    steps = [0]
    monkeypatch.setattr(engine, "translate_nbest_steps", paced(engine, 0.003, steps=steps))
    b = stepped(engine)
    order: list[str] = []

    async def main():
        async def one(name, texts, options=None):
            out = await b.submit("t", texts, options)
            order.append(name)
            return out

        beam = asyncio.ensure_future(one("beam", paragraph(8), {"beam_size": 4, "n_best": 4}))
        await asyncio.sleep(0.02)
        greedy = await one("greedy", [SHORT])
        at = steps[0]
        await beam
        return greedy, at

    greedy, at = asyncio.run(main())
    b.stop()
    assert order == ["greedy", "beam"] and greedy == engine.translate([SHORT])
    assert 0 < at < steps[0]  # answered mid-way through the beam search


def test_an_abandoned_beam_batch_stops_at_the_next_step(engine, monkeypatch, workers):
    closed: list[int] = []
    monkeypatch.setattr(engine, "translate_nbest_steps", paced(engine, 0.01, closed=closed))
    dropped: list[tuple[str, int, str]] = []
    b = stepped(engine, on_dropped=lambda m, n, where: dropped.append((m, n, where)))

    async def main():
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(b.submit("t", paragraph(6), {"beam_size": 4}), 0.05)
        t0 = time.monotonic()
        out = await b.submit("t", [SHORT], {"beam_size": 2})
        return out, time.monotonic() - t0

    out, seconds = asyncio.run(main())
    b.stop()
    assert out == engine.translate_nbest([SHORT], beam_size=2)
    # one batch per worker: the request's parts (two workers: 3 texts each), every one closed mid-way
    assert closed == [1] * workers and sum(n for _, n, w in dropped if w == "running") == 6
    assert seconds < 1.0


def test_a_stepped_beam_batch_past_the_drain_deadline_fails_with_scheduler_stopped(engine, monkeypatch):
    # shutting down: once the drain time is over, a beam batch under way is closed and its
    # callers get SchedulerStopped (a 503), not a hang; the worker then finishes
    monkeypatch.setattr(engine, "translate_nbest_steps", paced(engine, 0.01))
    b = stepped(engine)

    async def main():
        beam = asyncio.ensure_future(b.submit("t", paragraph(6), {"beam_size": 4}))
        await asyncio.sleep(0.05)  # under way
        b.drain(0.0)
        with pytest.raises(SchedulerStopped):
            await asyncio.wait_for(beam, 5)

    asyncio.run(main())
    b.stop(5)
    assert not any(t.is_alive() for t in b.threads) and not b.workers[0].stepping


def test_two_workers_share_a_paragraph_and_translate_as_alone(engine, monkeypatch):
    texts = paragraph(10)
    alone = engine.translate(texts)
    monkeypatch.setattr(engine, "run_step", slowed(engine, 0.002))
    threads: dict[str, int] = {}
    real = engine.run_step

    def step(*args):
        name = threading.current_thread().name
        threads[name] = threads.get(name, 0) + 1
        return real(*args)

    monkeypatch.setattr(engine, "run_step", step)
    b = make(engine, workers=2)

    async def main():
        return await b.submit("t", texts)

    out = asyncio.run(main())
    b.stop()
    assert out == alone
    assert len(threads) == 2 and all(n > 1 for n in threads.values())  # both workers decoded rows of it


def test_many_requests_on_two_workers_are_each_answered_once_and_right(engine):
    requests = [paragraph(1 + k % 7, seed=k) for k in range(40)]
    alone = {t: engine.translate([t])[0] for r in requests for t in r}
    b = make(engine, workers=2, max_batch_size=6)

    async def main():
        return await asyncio.gather(*[b.submit("t", r) for r in requests])

    out = asyncio.run(main())
    b.stop()
    assert out == [[alone[t] for t in r] for r in requests]
    assert b.running == 0 and b.queued == 0 and not any(t.is_alive() for t in b.threads)


def test_a_requests_longest_sentences_join_first(engine, monkeypatch):
    from service.runtime.continuous import DecodeBatch

    joined: list[int] = []
    real = DecodeBatch.add

    def add(self, sources, tags, scored=False):
        joined.extend(len(s) for s in sources)
        return real(self, sources, tags, scored=scored)

    monkeypatch.setattr(DecodeBatch, "add", add)
    monkeypatch.setattr(engine, "run_step", slowed(engine, 0.002))
    texts = [" ".join(WORDS[: 2 + (k * 5) % 11]) for k in range(8)]  # lengths out of order
    b = make(engine, max_batch_size=3, workers=1)

    async def main():
        return await b.submit("t", texts)

    out = asyncio.run(main())
    b.stop()
    assert out == engine.translate(texts)
    assert joined == sorted(joined, reverse=True) and len(set(joined)) > 3


def test_a_beam_request_on_two_workers_is_stepped_in_parts_on_both(engine, monkeypatch):
    texts = paragraph(9) + ["", SHORT]
    whole = engine.translate_nbest(texts, beam_size=3, n_best=2)
    threads: dict[str, int] = {}
    real = engine.translate_nbest_steps

    def steps(*args, **kw):
        gen = real(*args, **kw)
        while True:
            try:
                next(gen)
            except StopIteration as done:
                return done.value
            name = threading.current_thread().name
            threads[name] = threads.get(name, 0) + 1
            time.sleep(0.001)
            yield

    b = make(engine, steppers={"t": steps}, workers=2, max_batch_size=16)

    async def main():
        return await b.submit("t", texts, {"beam_size": 3, "n_best": 2})

    out = asyncio.run(main())
    b.stop()
    assert out == whole  # each text's n-best as in one whole batch, in the texts' order
    assert len(threads) == 2 and all(n > 1 for n in threads.values())  # a part stepped on each worker
    assert b.queued == 0 and b.queued_tokens == 0


def test_a_beam_request_whose_part_is_refused_gets_queue_full_and_leaves_nothing_queued(engine, monkeypatch):
    gate = threading.Event()
    real = engine.translate_nbest_steps

    def held(*args, **kw):
        gate.wait(10)
        return (yield from real(*args, **kw))

    b = make(engine, steppers={"t": held}, workers=2, max_queue=6)

    async def main():
        first = asyncio.ensure_future(b.submit("t", paragraph(4), {"beam_size": 2}))  # both workers held
        await asyncio.sleep(0.05)
        with pytest.raises(QueueFull):
            await b.submit("t", paragraph(10, seed=3), {"beam_size": 2})  # parts of 5: the second is refused
        await asyncio.sleep(0.05)
        gate.set()
        return await first

    assert asyncio.run(main()) == engine.translate_nbest(paragraph(4), beam_size=2)
    b.stop()
    assert b.queued == 0


def test_a_beam_request_beyond_the_queue_is_too_big_as_a_whole_not_in_parts(engine):
    texts = paragraph(8)
    tokens = sum(engine.n_tokens(t) for t in texts)
    b = make(engine, steppers={"t": engine.translate_nbest_steps}, workers=2, max_queue_tokens=tokens - 1)

    async def main():
        with pytest.raises(TooBig, match=f"request of {tokens} source tokens"):
            await b.submit("t", texts, {"beam_size": 2})  # each part alone would fit

    asyncio.run(main())
    b.stop()
    assert b.queued == 0
