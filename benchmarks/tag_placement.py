"""Inline-markup placement on hand-labelled tagged sentences (format=html, service/html.py).

Each case is an HTML sentence with inline elements, a target language, and the element(s) as
they should come out (any of `expect`, or all of `need`). Sends every case to a server process on
`--model-dir` (`POST /translate`, format=html, source given) twice: with the models' word
alignment (the default) and with the word search alone (`TRANSERVE_HTML_ALIGNMENT=false`).

    python -m benchmarks.tag_placement --model-dir model [--out results.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import httpx

from benchmarks.load import Server
from benchmarks.machine import describe

CASES = Path(__file__).parent / "data" / "tagged-sentences.json"


def placed(result: str, case: dict) -> bool:
    low = result.lower()
    if "need" in case:
        return all(w.lower() in low for w in case["need"])
    return any(w.lower() in low for w in case["expect"])


def run(model_dir: Path, cases: list[dict], threads: int = 2) -> dict:
    rows = [{"html": c["html"], "source": c["source"], "target": c["target"]} for c in cases]
    score = {}
    for how, aligned in (("aligned", True), ("search", False)):
        server = Server(model_dir, threads, html_alignment=aligned)
        try:
            for row, case in zip(rows, cases):
                body = {"q": case["html"], "source": case["source"], "target": case["target"], "format": "html"}
                r = httpx.post(server.base + "/translate", json=body, timeout=60)
                r.raise_for_status()
                row[how] = r.json()["translatedText"]
                row[f"{how}_ok"] = placed(row[how], case)
        finally:
            server.stop()
        score[how] = sum(row[f"{how}_ok"] for row in rows)
    return {"model_dir": str(model_dir), "cases": len(cases), "placed": score, "rows": rows, "machine": describe()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path, default=Path("model"))
    ap.add_argument("--cases", type=Path, default=CASES)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    result = run(args.model_dir, json.loads(args.cases.read_text()), args.threads)
    for row in result["rows"]:
        print(f"{'OK ' if row['aligned_ok'] else 'BAD'} {row['html']}")
        print(f"    aligned: {row['aligned']}\n    search:  {row['search']}")
    print(f"placed right of {result['cases']}: {result['placed']}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
