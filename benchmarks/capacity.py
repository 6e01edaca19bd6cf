"""Capacity of the schedulers, alternating: the realistic mix of benchmarks/load.py (MIX) from 64
closed-loop clients for `--seconds`, one server per run, in the order given (alternate them: a
shared machine's speed moves between windows, BENCHMARKS.md), with what the server's /metrics say
the model calls were (rows per call, generated tokens).

    python benchmarks/capacity.py --seconds 45 --schedulers batch continuous batch continuous \
        --out benchmarks/results/capacity-s8.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

try:  # run as a script (python benchmarks/capacity.py) or as a module
    from load import MIX, ROOT, MixLoad, Server, load_pools, metric_samples, warm_up  # type: ignore[import-not-found, no-redef]
    from machine import describe  # type: ignore[import-not-found, no-redef]
except ImportError:
    from benchmarks.load import MIX, ROOT, MixLoad, Server, load_pools, metric_samples, warm_up
    from benchmarks.machine import describe

COUNTERS = ("transerve_batch_size_sum", "transerve_batch_size_count", "transerve_generated_tokens_total")


def counters(base: str) -> dict[str, float]:
    """COUNTERS, each summed over its labels (models)."""
    out: dict[str, float] = {}
    for name, _, value in metric_samples(base, COUNTERS):
        out[name] = out.get(name, 0.0) + value
    return out


async def one(args: argparse.Namespace, scheduler: str, pools: dict[str, list[str]]) -> dict:
    server = Server(args.model_dir, args.threads, scheduler=scheduler, max_inflight_requests=1024)
    try:
        await warm_up(server.base, pools["tatoeba"])
        before, cpu = counters(server.base), server.cpu_seconds()
        load = MixLoad(server.base, pools, MIX, seed=7)
        t0 = time.perf_counter()
        rate = await load.saturate(64, args.seconds)
        wall = time.perf_counter() - t0
        await load.close()
        d = {k: v - before.get(k, 0.0) for k, v in counters(server.base).items()}
        calls = d.get("transerve_batch_size_count", 0.0)
        return {
            "scheduler": scheduler,
            "requests_per_s": round(rate, 2),
            "wall_s": round(wall, 1),
            "server_cpu_s": round(server.cpu_seconds() - cpu, 1),
            "generated_tokens_per_s": round(d.get("transerve_generated_tokens_total", 0.0) / wall),
            "model_calls": int(calls),
            "rows_per_call": round(d.get("transerve_batch_size_sum", 0.0) / calls, 1) if calls else None,
        }
    finally:
        server.stop()


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, default=ROOT / "model")
    p.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=45)
    p.add_argument("--schedulers", nargs="+", default=["batch", "continuous", "batch", "continuous"])
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    pools = load_pools(args.data_root)
    rows = []
    for scheduler in args.schedulers:
        rows.append(await one(args, scheduler, pools))
        print(json.dumps(rows[-1]), flush=True)
    if args.out:
        result = {"mix": MIX, "rows": rows, "machine": describe()}
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
