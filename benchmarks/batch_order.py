"""Offline throughput of a bundle with the service's own Translator on batches of `--batch`
sentences: length-sorted (the offline best case) vs in random order (what a live service sees,
hence the fair offline reference for the HTTP figures). Median of `--repeats` passes.

    PYTHONPATH=. python benchmarks/batch_order.py [--bundle model/multi] \
        [--source ../shared/data/multi30k/test_2016_flickr.de.gz --target en]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

from benchmarks.common import open_translator
from training.data import read_lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, default=Path("model/multi"))
    p.add_argument("--source", type=Path, default=Path("../shared/data/multi30k/test_2016_flickr.de.gz"))
    p.add_argument("--target", default="en", help="the target language (tag of a multilingual bundle's sources)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--limit", type=int, default=0, help="first N sentences only (0 = all)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    engine = open_translator(args.bundle, args.threads)
    sources = read_lines(args.source)[: args.limit or None]
    sources = [engine.manifest.model_input(s, args.target) for s in sources]
    for name, order in (
        ("sorted", sorted(range(len(sources)), key=lambda i: engine.text.n_tokens(sources[i]))),
        ("random", random.Random(1).sample(range(len(sources)), len(sources))),
    ):
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            for k in range(0, len(order), args.batch):
                engine.translate([sources[i] for i in order[k : k + args.batch]])
            times.append(time.perf_counter() - t0)
        print(name, f"{len(sources) / statistics.median(times):.1f} sentences/s")


if __name__ == "__main__":
    main()
