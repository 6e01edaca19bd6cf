"""Greedy requests beside beam-search requests, in the continuous scheduler (no HTTP):

    PYTHONPATH=. python benchmarks/beam_beside.py --bundle model/multi --seconds 8 \
        --out benchmarks/results/beam-beside.json

One-sentence greedy requests (Tatoeba de-en valid) arrive every 25 ms while 0, 1 or 2 clients
each keep a 32-sentence beam-4 request with 3 alternatives going (what LibreTranslate clients
asking for alternatives send). Two schedulers on the same translator, in turn for each load:
beam batches run whole between two decoder steps (as before session 14), or stepped, one
decoder step per worker turn (`ContinuousBatcher(steppers=...)`, the service's default).
Reported: the greedy requests' p50/p95/p99 and the beam requests' median, in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

from benchmarks.machine import describe
from service.runtime.bundle import load_manifest
from service.runtime.sessions import resolve_providers, retain_freed_memory, share_thread_pool
from service.runtime.translator import Translator
from service.scheduler import ContinuousBatcher


def sentences(path: Path, n: int) -> list[str]:
    import gzip

    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [line.strip() for line, _ in zip(f, range(n))]


async def measure(batcher: ContinuousBatcher, texts: list[str], clients: int, seconds: float) -> dict:
    greedy: list[float] = []
    beam: list[float] = []
    stop = time.monotonic() + seconds

    async def beam_client(k: int) -> None:
        while time.monotonic() < stop:
            t0 = time.monotonic()
            start = (k * 32) % (len(texts) - 32)
            await batcher.submit("m", texts[start : start + 32], {"beam_size": 4, "n_best": 4})
            beam.append(time.monotonic() - t0)

    async def one(i: int) -> None:
        t0 = time.monotonic()
        await batcher.submit("m", [texts[i % len(texts)]])
        greedy.append(time.monotonic() - t0)

    loads = [asyncio.create_task(beam_client(k)) for k in range(clients)]
    singles, i = [], 0
    while time.monotonic() < stop:
        singles.append(asyncio.create_task(one(i)))
        i += 1
        await asyncio.sleep(0.025)
    await asyncio.gather(*singles, *loads)
    greedy.sort()

    def q(p: float) -> float:
        return round(1000 * greedy[min(len(greedy) - 1, int(p * len(greedy)))], 1)

    return {
        "beam_clients": clients,
        "greedy_requests": len(greedy),
        "greedy_p50_ms": q(0.5),
        "greedy_p95_ms": q(0.95),
        "greedy_p99_ms": q(0.99),
        "beam_requests": len(beam),
        "beam_median_ms": round(1000 * statistics.median(beam), 1) if beam else None,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, default=Path("model/multi"))
    p.add_argument("--data", type=Path, default=Path("../shared/data/tatoeba-de-en/valid.de.gz"))
    p.add_argument("--tag", default="<2en> ", help="prefix of every text (the multi bundle's target tag)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    retain_freed_memory(64)
    share_thread_pool(args.threads)
    tr = Translator(args.bundle, load_manifest(args.bundle), resolve_providers("cpu"), threads=args.threads)
    texts = [args.tag + t for t in sentences(args.data, 300)]

    def runner(texts, **options):  # the app's runner
        return tr.translate_nbest(texts, **options) if options else tr.translate(texts)

    rows = []
    for clients in (0, 1, 2):
        for mode in ("whole", "stepped"):
            steppers = {"m": tr.translate_nbest_steps} if mode == "stepped" else None
            batcher = ContinuousBatcher({"m": runner}, {"m": tr}, 32, 5.0, 4096, lanes=[], steppers=steppers)
            row = {"beam_batches": mode, **asyncio.run(measure(batcher, texts, clients, args.seconds))}
            batcher.stop()
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": describe(), "seconds": args.seconds, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
