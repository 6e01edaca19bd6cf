"""The schedulers' queue (service/scheduling/queue.py) and the service's way into it
(scheduling/submit.py), without worker threads: arrival order, bounds, pruning abandoned work,
taking a batch, and the request's arrival time handed from the middleware's context."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from service.scheduling import QueueFull, SchedulerStopped, TooBig, arrived, run_batched
from service.scheduling.queue import Job, WorkQueue


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def job(loop, texts, model="m", tokens=0, enqueued=100.0, options=()) -> Job:
    return Job(model, list(texts), loop.create_future(), loop, options, enqueued=enqueued, tokens=tokens)


def test_a_later_pass_of_an_earlier_request_queues_before_later_requests(loop):
    q = WorkQueue(max_queue=10)
    b, a, c = job(loop, ["b"]), job(loop, ["a"]), job(loop, ["c"])
    q.put(b, arrived=50.0)
    q.put(c)  # no arrival: its own time (100)
    q.put(a, arrived=40.0)  # queued last, arrived first
    assert [j.texts for j in q.jobs] == [["a"], ["b"], ["c"]] and q.queued == 3 and q.callers == 3


def test_the_queue_is_bounded_in_texts_and_tokens(loop):
    q = WorkQueue(max_queue=3, max_queue_tokens=10)
    q.put(job(loop, ["a", "b"], tokens=4))
    with pytest.raises(QueueFull):
        q.put(job(loop, ["c", "d"], tokens=1))  # 4 texts
    with pytest.raises(QueueFull):
        q.put(job(loop, ["c"], tokens=7))  # 11 tokens
    q.put(job(loop, ["c"], tokens=6))
    assert (q.queued, q.queued_tokens) == (3, 10)
    with pytest.raises(TooBig, match="request of 11 source tokens; at most 10"):
        q.check_size(11)
    WorkQueue(max_queue=3).check_size(10**9)  # no token bound


def test_a_stopping_or_drained_queue_takes_nothing(loop):
    q = WorkQueue(max_queue=3)
    q.drain(0.0)
    with pytest.raises(SchedulerStopped):
        q.put(job(loop, ["a"]))
    q = WorkQueue(max_queue=3)
    q.stop()
    with pytest.raises(SchedulerStopped):
        q.put(job(loop, ["a"]))


def test_pruning_drops_abandoned_jobs_and_their_counts(loop):
    q = WorkQueue(max_queue=10, max_queue_tokens=100)
    gone, kept = job(loop, ["a", "b"], tokens=6), job(loop, ["c"], tokens=3)
    q.put(gone)
    q.put(kept)
    gone.abandoned, q.abandoned = True, 1
    dropped: list[tuple[str, int, str]] = []
    q.prune(lambda *a: dropped.append(a))
    assert list(q.jobs) == [kept] and (q.queued, q.queued_tokens, q.abandoned) == (1, 3, 0)
    assert dropped == [("m", 2, "queue")]


def test_a_batch_takes_the_first_jobs_key_within_its_size(loop):
    q = WorkQueue(max_queue=20)
    first, beam, other, same, big = (
        job(loop, ["a", "b"]),
        job(loop, ["c"], options=(("beam_size", 4),)),
        job(loop, ["d"], model="n"),
        job(loop, ["e"]),
        job(loop, ["f", "g"]),
    )
    for j in (first, beam, other, same, big):
        q.put(j)
    assert q.take_batch(lambda j: True, max_size=3, max_wait=0.0, wait=False) == [first, same]
    assert q.jobs == type(q.jobs)([beam, other, big]) and q.queued == 4


def test_run_batched_hands_the_requests_arrival_to_the_scheduler():
    seen: list[float | None] = []

    class Scheduler:
        queued = 0

        async def submit(self, model, texts, options=None, arrived=None):
            seen.append(arrived)
            return list(texts)

    gauge = SimpleNamespace(set=lambda n: None)
    state = SimpleNamespace(
        scheduler=Scheduler(),
        metrics=SimpleNamespace(queue_depth=gauge),
        settings=SimpleNamespace(request_timeout_s=5.0),
    )

    async def request(at: float | None):
        if at is not None:
            arrived.set(at)  # as the middleware does for each HTTP request
        return await run_batched(state, "m", ["x"])

    assert asyncio.run(request(12.5)) == ["x"] and asyncio.run(request(None)) == ["x"]
    assert seen == [12.5, None]
