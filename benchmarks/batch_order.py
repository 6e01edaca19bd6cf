"""Offline throughput of the served de-en bundle with the service's own Translator, batches of
32 sentences of test_2016_flickr: length-sorted (the offline best case) vs in random order (what
a live service sees). Median of 3.

    PYTHONPATH=. python benchmarks/batch_order.py
"""

import gzip
import random
import statistics
import time
from pathlib import Path

from service.runtime.bundle import load_manifest
from service.runtime.sessions import resolve_providers
from service.runtime.translator import Translator

b = Path("model/multi")
m = load_manifest(b)
e = Translator(b, m, resolve_providers("cpu"), threads=2)
src = [line.strip() for line in gzip.open("../shared/data/multi30k/test_2016_flickr.de.gz", "rt")]
for name, order in (
    ("sorted", sorted(range(len(src)), key=lambda i: len(e.sp.encode(src[i])))),
    ("random", random.Random(1).sample(range(len(src)), len(src))),
):
    ts = []
    for _ in range(3):
        t0 = time.perf_counter()
        for k in range(0, len(order), 32):
            e.translate([src[i] for i in order[k : k + 32]])
        ts.append(time.perf_counter() - t0)
    print(name, f"{len(src) / statistics.median(ts):.1f} sentences/s")
