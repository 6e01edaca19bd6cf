"""Greedy vs beam search, and whether the confidence marks bad translations, for one bundle.

For each split: sacreBLEU of greedy and of beam N with the service's engine (the served variant
unless --variant), and the corpus BLEU of the sentences ranked by greedy confidence: the lowest
decile against the other nine (a confidence that marks bad translations gives its lowest decile a
far lower BLEU). Multilingual bundles take --direction (the source gets its target's tag).

    PYTHONPATH=. python benchmarks/decoding_quality.py --bundle model/de-en \\
        --source ../shared/data/multi30k/val.de.gz --reference ../shared/data/multi30k/val.en.gz --target en
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import sacrebleu

from benchmarks.common import open_translator
from service.runtime.translator import Translator
from training.data import read_lines


def bleu(hyps: list[str], refs: list[str], target: str) -> float:
    """Corpus sacreBLEU (zh: its Chinese tokenizer), rounded to 2 places."""
    return round(sacrebleu.corpus_bleu(hyps, [refs], tokenize="zh" if target == "zh" else "13a").score, 2)


def decode(engine: Translator, texts: list[str], beam: int, batch: int = 32) -> tuple[list[str], list[float], float]:
    """Each text's best translation and its confidence (100 x the geometric mean of its tokens'
    probabilities), and the seconds it all took; batches of neighbouring lengths."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    hyps, conf = [""] * len(texts), [0.0] * len(texts)
    t0 = time.perf_counter()
    for start in range(0, len(order), batch):
        chunk = order[start : start + batch]
        for i, nbest in zip(chunk, engine.translate_nbest([texts[i] for i in chunk], beam_size=beam)):
            text, score, length = nbest[0]
            hyps[i], conf[i] = text, 100 * math.exp(score / length) if length else 100.0
    return hyps, conf, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", required=True)
    p.add_argument("--source", required=True)
    p.add_argument("--reference", required=True)
    p.add_argument("--target", required=True, help="target language (tag for a multilingual bundle; BLEU tokenizer)")
    p.add_argument("--variant")
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out")
    a = p.parse_args()
    engine = open_translator(a.bundle, a.threads, a.variant)
    sources, refs = read_lines(Path(a.source)), read_lines(Path(a.reference))
    if a.limit:
        sources, refs = sources[: a.limit], refs[: a.limit]
    inputs = [engine.manifest.model_input(s, a.target) for s in sources]
    greedy, conf, t_greedy = decode(engine, inputs, 1)
    beam, _, t_beam = decode(engine, inputs, a.beam)
    ranked = sorted(range(len(inputs)), key=lambda i: conf[i])
    tenth = max(1, len(ranked) // 10)
    low, rest = ranked[:tenth], ranked[tenth:]
    result = {
        "bundle": a.bundle,
        "variant": engine.variant,
        "source": a.source,
        "sentences": len(inputs),
        "greedy_bleu": bleu(greedy, refs, a.target),
        f"beam{a.beam}_bleu": bleu(beam, refs, a.target),
        "greedy_seconds": round(t_greedy, 2),
        f"beam{a.beam}_seconds": round(t_beam, 2),
        "lowest_confidence_decile_bleu": bleu([greedy[i] for i in low], [refs[i] for i in low], a.target),
        "other_deciles_bleu": bleu([greedy[i] for i in rest], [refs[i] for i in rest], a.target),
        "lowest_decile_max_confidence": round(conf[low[-1]], 2),
        "median_confidence": round(conf[ranked[len(ranked) // 2]], 2),
    }
    print(json.dumps(result, indent=2))
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
