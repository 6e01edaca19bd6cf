"""Resident memory of the translation engine under a long random workload, with onnxruntime's
CPU memory arena on and off: does memory settle, and what does the arena cost or save?

    python benchmarks/memory.py --bundle model/multi --batches 3000 --threads 2 \
        --out benchmarks/results/memory.json
    python benchmarks/memory.py --bundle model/multi --batches 3000 --threads 2 --warm-max \
        --out benchmarks/results/memory-warm-max.json

Each mode runs in its own subprocess (resident memory is per process) over the same seeded
workload: batches of 1 to 32 sentences drawn at random from the Multi30k training split (so
lengths and batch shapes vary as they do behind the service's dynamic batcher), once with the
arena (`TRANSERVE_MEMORY_ARENA=true`) and once without (the default). With `--warm-max` the
largest batch the service can form is decoded first (the worst case for every buffer).
Resident memory is sampled every `--every` batches. Reported per mode: sentences/s, RSS after the first tenth of
the batches (warm-up) and at the end, the largest step, and the batch at which the last new
high-water mark was set.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def workload(path: Path, n_batches: int, seed: int) -> list[list[str]]:
    """`n_batches` batches of 1 to 32 sentences of `path`, drawn with `seed`."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        sentences = [line.strip() for line in f if line.strip()]
    rng = random.Random(seed)
    return [rng.sample(sentences, rng.randint(1, 32)) for _ in range(n_batches)]


def largest_batch(engine, seed: int) -> None:
    """The largest batch the service can form: max_batch_size (32) sources of max_len tokens,
    decoded for max_len - 1 steps whatever the model predicts (fed random tokens), so every
    buffer reaches its largest shape."""
    rng = np.random.default_rng(seed)
    src = rng.integers(4, engine.manifest.vocab_size, (32, engine.max_len))
    src[:, -1] = engine.eos
    state = engine.start(src)
    tokens = np.full((32, 1), engine.bos, dtype=np.int64)
    for _ in range(engine.max_len - 1):
        engine.step(state, tokens)
        tokens = rng.integers(4, engine.manifest.vocab_size, (32, 1))


def worker(args: argparse.Namespace) -> None:
    """One mode (`--arena`): the workload through one engine, resident memory sampled; prints JSON."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script
    from benchmarks.common import open_translator, status_mb

    def rss_mb() -> float:
        return round(status_mb("VmRSS"), 1)

    engine = open_translator(args.bundle, args.threads, memory_arena=args.arena == "on")
    batches = workload(Path(args.data), args.batches, args.seed)
    warm_max_mb = None
    if args.warm_max:
        largest_batch(engine, args.seed)
        warm_max_mb = rss_mb()
    samples = [{"batch": 0, "rss_mb": rss_mb()}]
    sentences, t0 = 0, time.perf_counter()
    for i, batch in enumerate(batches, 1):
        engine.translate(batch)
        sentences += len(batch)
        if i % args.every == 0 or i == len(batches):
            samples.append({"batch": i, "rss_mb": rss_mb()})
    seconds = time.perf_counter() - t0
    warm = next(s for s in samples if s["batch"] >= len(batches) // 10)
    steps = [b["rss_mb"] - a["rss_mb"] for a, b in zip(samples, samples[1:])]
    peak = max(s["rss_mb"] for s in samples)
    print(
        json.dumps(
            {
                "arena": args.arena,
                "sentences_per_s": round(sentences / seconds, 1),
                "sentences": sentences,
                "rss_loaded_mb": samples[0]["rss_mb"],
                "rss_after_largest_batch_mb": warm_max_mb,
                "rss_after_warmup_mb": warm["rss_mb"],
                "rss_end_mb": samples[-1]["rss_mb"],
                "growth_after_warmup_mb": round(samples[-1]["rss_mb"] - warm["rss_mb"], 1),
                "largest_step_mb": round(max(steps), 1),
                "last_new_peak_at_batch": next(s["batch"] for s in samples if s["rss_mb"] == peak),
                "samples": samples,
            }
        )
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default="model/multi")
    p.add_argument("--data", default="../shared/data/multi30k/train.de.gz")
    p.add_argument("--batches", type=int, default=4000)
    p.add_argument("--every", type=int, default=50, help="sample resident memory every N batches")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--warm-max", action="store_true", help="first decode the largest batch (32 x max_len tokens, max_len steps)"
    )
    p.add_argument("--arena", choices=["on", "off"], help="(worker) run one mode and print JSON")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    if args.arena:
        worker(args)
        return
    results = []
    for mode in ("on", "off"):
        cmd = [sys.executable, __file__, *sys.argv[1:], "--arena", mode]
        cmd = [c for i, c in enumerate(cmd) if not (c == "--out" or (i and cmd[i - 1] == "--out"))]
        r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        results.append(r)
        largest = r["rss_after_largest_batch_mb"]
        print(
            f"arena {mode:3s}: {r['sentences_per_s']:7.1f} sent/s  RSS loaded {r['rss_loaded_mb']:.1f}  "
            + (f"after the largest batch {largest:.1f}  " if largest else "")
            + f"after warm-up {r['rss_after_warmup_mb']:.1f}  end {r['rss_end_mb']:.1f} MB  "
            f"(growth after warm-up {r['growth_after_warmup_mb']:+.1f}, largest step {r['largest_step_mb']:.1f}, "
            f"last new peak at batch {r['last_new_peak_at_batch']})",
            flush=True,
        )
    if args.out:
        args.out.write_text(json.dumps({"command": "python " + " ".join(sys.argv), "modes": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
