"""Inline-markup placement on hand-labelled tagged sentences (format=html, service/html.py).

Each case is an HTML sentence with inline elements, a target language, and the element(s) as
they should come out (any of `expect`, or all of `need`). Runs the bundle's served variant
through the service's HTML path twice: with the model's word alignment (forced decoding,
runtime/translator.align) and with the word search alone, and prints each output.

    python -m benchmarks.tag_placement --bundle model/multi [--out results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from benchmarks.machine import describe
from service.html import translate_html
from service.runtime.bundle import load_manifest
from service.runtime.sessions import resolve_providers
from service.runtime.translator import Translator

CASES = Path(__file__).parent / "data" / "tagged-sentences.json"


def placed(result: str, case: dict) -> bool:
    low = result.lower()
    if "need" in case:
        return all(w.lower() in low for w in case["need"])
    return any(w.lower() in low for w in case["expect"])


def run(bundle: Path, cases: list[dict], threads: int = 2) -> dict:
    manifest = load_manifest(bundle)
    engine = Translator(bundle, manifest, resolve_providers("cpu"), threads=threads)
    rows, score = [], {"aligned": 0, "search": 0}
    for case in cases:
        target = case["target"]

        async def translate(texts: list[str], target: str = target) -> list[str]:
            return engine.translate([manifest.model_input(t, target) for t in texts])

        async def align(pairs: list[tuple[str, str]], target: str = target) -> list:
            inputs = [manifest.model_input(s, target) for s, _ in pairs]
            links = engine.align([(x, t) for x, (_, t) in zip(inputs, pairs)])
            shifts = [len(x) - len(s) for x, (s, _) in zip(inputs, pairs)]
            return [[(a, b, c - k, d - k) for a, b, c, d in ls if c >= k] for ls, k in zip(links, shifts)]

        row = {"html": case["html"], "target": target}
        for how, aligner in (("aligned", align if engine.aligns else None), ("search", None)):
            out = asyncio.run(translate_html(case["html"], translate, aligner))
            row[how], row[f"{how}_ok"] = out, placed(out, case)
            score[how] += row[f"{how}_ok"]
        rows.append(row)
    return {
        "bundle": str(bundle),
        "variant": engine.variant,
        "aligns": engine.aligns,
        "cases": len(cases),
        "placed": score,
        "rows": rows,
        "machine": describe(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--cases", type=Path, default=CASES)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    result = run(args.bundle, json.loads(args.cases.read_text()))
    for row in result["rows"]:
        print(f"{'OK ' if row['aligned_ok'] else 'BAD'} {row['html']}")
        print(f"    aligned: {row['aligned']}\n    search:  {row['search']}")
    print(f"placed right of {result['cases']}: {result['placed']}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
