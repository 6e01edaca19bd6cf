"""What one decoder step costs as the running batch widens: rows x cache slots x source tokens.

    PYTHONPATH=. python benchmarks/step_cost.py --bundle model/multi --variant int8-static

A continuous batch's rows all pay for the batch's widest cache and longest source; this measures
by how much (medians of 30 steps after 3 warm-up steps, the decoder graph alone, random caches).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from benchmarks.common import open_translator
from service.runtime import graph_io


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, default=Path("model/multi"))
    p.add_argument("--variant", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rows", type=int, nargs="+", default=[8, 32])
    args = p.parse_args()
    # the thread pool and the allocator's retention as the service sets them
    engine = open_translator(args.bundle, args.threads, args.variant, shared_pool=True, retain_freed_mb=64)
    rng = np.random.default_rng(0)
    for rows in args.rows:
        for cache, source in ((5, 10), (30, 20), (60, 40), (120, 100)):
            # contract 3: buffers as wide as the longest output may be (128 slots), written in place
            width = max(128, cache + 1) if engine.static else cache
            state = (
                engine.start(np.full((rows, source), 5, dtype=np.int64), width=width)
                if engine.static
                else (engine.start(np.full((rows, source), 5, dtype=np.int64)))
            )
            for name in engine.cache_names:
                state[name] = rng.random((rows, engine.n_heads, width, engine.d_head), dtype=np.float32)
            feeds = {
                graph_io.INPUT_IDS: np.full((rows, 1), 7, dtype=np.int64),
                graph_io.POSITION: np.full(rows, cache, dtype=np.int64),
                **({} if engine.static else {graph_io.SELF_MASK: np.ones((rows, cache + 1), dtype=bool)}),
                **{k: v for k, v in state.items() if k != graph_io.POSITION},
            }
            for _ in range(3):
                engine.run_step(state, feeds)
            times = []
            for _ in range(30):
                t0 = time.perf_counter()
                engine.run_step(state, feeds)  # the way the engines run it (contract 3: bound, in place)
                times.append(time.perf_counter() - t0)
            print(f"rows {rows:3d}  cache {cache:4d}  source {source:4d}  {1000 * float(np.median(times)):.2f} ms")


if __name__ == "__main__":
    main()
