"""Whole-batch scheduling (service/scheduling/batcher.py): merged batches give the unbatched
outputs; overload and failures are contained."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from service.scheduling import BatchScheduler, QueueFull


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_are_merged_and_results_routed_back():
    calls: list[int] = []

    def model(texts):
        calls.append(len(texts))
        time.sleep(0.01)
        return [t.upper() for t in texts]

    b = BatchScheduler({"m": model}, max_batch_size=16, max_wait_ms=50)

    async def main():
        jobs = [b.submit("m", [f"text {i}", f"more {i}"]) for i in range(6)]
        return await asyncio.gather(*jobs)

    results = run(main())
    b.stop()
    assert results == [[f"TEXT {i}", f"MORE {i}"] for i in range(6)]
    assert max(calls) > 2  # at least one call held texts of several requests
    assert sum(calls) == 12


def test_merge_off_runs_each_request_alone():
    calls: list[list[str]] = []

    def model(texts):
        calls.append(list(texts))
        time.sleep(0.01)
        return [t.upper() for t in texts]

    b = BatchScheduler({"m": model}, max_batch_size=16, max_wait_ms=50, merge=False)

    async def main():
        return await asyncio.gather(*[b.submit("m", [f"text {i}", f"more {i}"]) for i in range(6)])

    results = run(main())
    b.stop()
    assert results == [[f"TEXT {i}", f"MORE {i}"] for i in range(6)]
    assert sorted(sorted(c) for c in calls) == [[f"more {i}", f"text {i}"] for i in range(6)]  # one call each


@pytest.mark.parametrize("others_on_their_way", [False, True])
def test_a_lone_request_does_not_wait_for_batch_mates(others_on_their_way):
    # in_flight counts the requests the server handles; if all of them are queued, waiting
    # max_wait_ms could only add latency. If another is still on its way, the batch waits.
    b = BatchScheduler(
        {"m": lambda texts: list(texts)}, max_batch_size=16, max_wait_ms=400, in_flight=lambda: 1 + others_on_their_way
    )
    t0 = time.perf_counter()
    assert run(b.submit("m", ["x"])) == ["x"]
    waited = time.perf_counter() - t0
    b.stop()
    assert (waited >= 0.35) if others_on_their_way else (waited < 0.2), waited


def test_batches_never_exceed_max_batch_size():
    sizes: list[int] = []
    b = BatchScheduler({"m": lambda ts: sizes.append(len(ts)) or list(ts)}, max_batch_size=4, max_wait_ms=20)

    async def main():
        return await asyncio.gather(*(b.submit("m", ["x"] * 3) for _ in range(5)), b.submit("m", ["y"] * 9))

    out = run(main())
    b.stop()
    assert out[-1] == ["y"] * 9
    assert max(sizes) <= 4 and sum(sizes) == 24


def test_texts_are_sorted_by_length_within_a_batch():
    seen: list[list[str]] = []
    b = BatchScheduler({"m": lambda ts: seen.append(list(ts)) or list(ts)}, max_batch_size=8, max_wait_ms=30)

    async def main():
        return await asyncio.gather(b.submit("m", ["ccc", "a"]), b.submit("m", ["bb", "dddd"]))

    assert run(main()) == [["ccc", "a"], ["bb", "dddd"]]
    b.stop()
    assert seen == [["a", "bb", "ccc", "dddd"]]


def test_queue_full_is_refused_at_once():
    gate = threading.Event()
    b = BatchScheduler({"m": lambda ts: gate.wait() and list(ts)}, max_batch_size=1, max_wait_ms=0, max_queue=3)

    async def main():
        first = asyncio.ensure_future(b.submit("m", ["a"]))  # taken by the worker, blocks in the model
        await asyncio.sleep(0.05)
        waiting = asyncio.ensure_future(b.submit("m", ["b", "c", "d"]))  # fills the queue
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull):
            await b.submit("m", ["e"])
        gate.set()
        return await first, await waiting

    assert run(main()) == (["a"], ["b", "c", "d"])
    b.stop()


def test_failure_in_one_batch_fails_only_that_batch():
    def model(texts):
        if "boom" in texts:
            raise RuntimeError("model exploded")
        return list(texts)

    b = BatchScheduler({"m": model}, max_batch_size=1, max_wait_ms=0)

    async def main():
        bad = asyncio.gather(b.submit("m", ["boom"]), return_exceptions=True)
        good = b.submit("m", ["fine"])
        return await bad, await good, await b.submit("m", ["later"])

    bad, good, later = run(main())
    b.stop()
    assert isinstance(bad[0], RuntimeError)
    assert good == ["fine"] and later == ["later"]


def test_stop_finishes_accepted_jobs():
    b = BatchScheduler({"m": lambda ts: time.sleep(0.05) or list(ts)}, max_batch_size=1, max_wait_ms=0)

    async def main():
        futs = [asyncio.ensure_future(b.submit("m", [str(i)])) for i in range(3)]
        await asyncio.sleep(0.01)
        await asyncio.get_running_loop().run_in_executor(None, b.stop)
        return await asyncio.gather(*futs)

    assert run(main()) == [["0"], ["1"], ["2"]]


def test_a_later_pass_of_an_earlier_request_queues_before_later_requests():
    # The second leg of a pivot (or a retranslation) of request A goes before request B, which
    # arrived after A, even though B was queued first: the queue is kept in arrival order.
    order: list[str] = []
    gate = threading.Event()

    def model(texts):
        if texts == ["block"]:
            gate.wait(5)
        order.extend(texts)
        return list(texts)

    b = BatchScheduler({"m": model}, max_batch_size=1, max_wait_ms=0, merge=False)

    async def main():
        blocker = asyncio.ensure_future(b.submit("m", ["block"]))
        await asyncio.sleep(0.05)  # the worker is busy with it
        t0 = time.monotonic()

        async def request(name: str, at: float, passes: int):
            for k in range(passes):
                await b.submit("m", [f"{name}{k}"], arrived=at)

        bb = asyncio.ensure_future(request("b", t0, 1))  # queued first...
        await asyncio.sleep(0.01)
        a = asyncio.ensure_future(request("a", t0 - 1.0, 1))  # ...but A arrived a second earlier
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.gather(blocker, a, bb)

    run(main())
    b.stop()
    assert order == ["block", "a0", "b0"]
