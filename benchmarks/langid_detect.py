"""Language identification as the service answers it, on the held-out sentences of the
languages it translates from (en/de/fr/cs/zh): `/classify` with model=langid (all 70 labels)
and `/detect` (among the languages the service translates from), from a server process on
`--model-dir`.

    python -m benchmarks.langid_detect --model-dir model --data ../shared/data/langid \
        [--out benchmarks/results/langid-detect.json]
"""

from __future__ import annotations

import argparse
import gzip
import json
import tomllib
from collections import Counter
from pathlib import Path

import httpx

from benchmarks.load import Server
from benchmarks.machine import describe

CONFIG = Path(__file__).parent.parent / "training" / "configs" / "langid.toml"
SOURCES = {"en": "en", "de": "de", "fr": "fr", "cs": "cs", "zh-Hans": "zh", "zh-Hant": "zh"}  # label -> /detect code


def measure(base: str, rows: list[tuple[str, str]]) -> dict:
    n, right70, right_detect = Counter(), Counter(), Counter()
    with httpx.Client(base_url=base, timeout=60) as client:
        for k in range(0, len(rows), 16):
            part = rows[k : k + 16]
            r = client.post("/classify", json={"model": "langid", "text": [t for t, _ in part]})
            r.raise_for_status()
            for (_, label), p in zip(part, r.json()["predictions"]):
                n[label] += 1
                right70[label] += p["label"] == label
        for text, label in rows:
            r = client.post("/detect", json={"q": text})
            r.raise_for_status()
            right_detect[label] += r.json()[0]["language"] == SOURCES[label]
    total = sum(n.values())
    return {
        "per_label": {
            label: {
                "sentences": n[label],
                "classify_70_accuracy": round(100 * right70[label] / n[label], 2),
                "detect_accuracy": round(100 * right_detect[label] / n[label], 2),
            }
            for label in sorted(n)
        },
        "sentences": total,
        "classify_70_accuracy": round(100 * sum(right70.values()) / total, 2),
        "detect_accuracy": round(100 * sum(right_detect.values()) / total, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path, default=Path("model"))
    ap.add_argument("--data", type=Path, default=Path("../shared/data/langid"))
    ap.add_argument("--split", default="valid")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    aliases = dict(a.split("=") for a in tomllib.loads(CONFIG.read_text())["data"]["label_aliases"])
    with gzip.open(args.data / f"{args.split}.tsv.gz", "rt", encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f][1:]
    chosen = [(text, aliases.get(label, label)) for text, label in rows]
    chosen = [(text, label) for text, label in chosen if label in SOURCES]
    server = Server(args.model_dir, args.threads)
    try:
        result = {"model_dir": str(args.model_dir), "split": args.split, **measure(server.base, chosen)}
    finally:
        server.stop()
    result["machine"] = describe()
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
