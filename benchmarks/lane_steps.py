"""Two lanes' decoder steps one after the other (as the scheduler runs them) vs at once from
two threads: does a second worker thread have cores to take?

    PYTHONPATH=. python benchmarks/lane_steps.py --bundle model/multi --threads 2 1 --rows 32

Each lane is a batch of `rows` rows with its own caches (cache 15 / source 12 and 40 / 40);
medians of 200 pairs of steps after warm-up, the decoder graph bound as the engines run it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks.common import open_translator
from service.runtime import graph_io


def measure(bundle: Path, variant: str, threads: int, rows: int) -> None:
    """Print the median ms of a pair of steps, one after the other and at once (twice each, in
    turn). The thread pool is shared, as the service's, and set once per process: each thread
    count runs in a process of its own."""
    eng = open_translator(bundle, threads, variant, shared_pool=True, retain_freed_mb=64)
    if not eng.static:
        raise SystemExit(f"{bundle}: not a contract-3 decoder")
    rng = np.random.default_rng(0)

    def lane(cache: int, source: int):
        state = eng.start(np.full((rows, source), 5, dtype=np.int64), width=128)
        for name in eng.cache_names:
            state[name] = rng.random((rows, eng.n_heads, 128, eng.d_head), dtype=np.float32)
        feeds = {
            graph_io.INPUT_IDS: np.full((rows, 1), 7, dtype=np.int64),
            graph_io.POSITION: np.full(rows, cache, dtype=np.int64),
            **{k: v for k, v in state.items() if k != graph_io.POSITION},
        }
        return state, feeds

    lanes = [lane(15, 12), lane(40, 40)]
    pool = ThreadPoolExecutor(1)

    def sequential() -> None:
        eng.run_step(*lanes[0])
        eng.run_step(*lanes[1])

    def at_once() -> None:
        other = pool.submit(eng.run_step, *lanes[1])
        eng.run_step(*lanes[0])
        other.result()

    for name, fn in (("one after the other", sequential), ("at once", at_once)) * 2:
        for _ in range(10):
            fn()
        times = []
        for _ in range(200):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        print(f"threads {threads}  rows {rows}  {name}: {1000 * float(np.median(times)):.3f} ms per pair of steps")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, default=Path("model/multi"))
    p.add_argument("--variant", default="int8-static")
    p.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    p.add_argument("--rows", type=int, default=32)
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one is not None:
        measure(args.bundle, args.variant, args.one, args.rows)
        return
    for threads in args.threads:
        cmd = [sys.executable, __file__, "--bundle", str(args.bundle), "--variant", args.variant]
        subprocess.run([*cmd, "--rows", str(args.rows), "--one", str(threads)], check=True)


if __name__ == "__main__":
    main()
