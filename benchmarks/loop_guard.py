"""The loop guard (service/runtime/loop_guard.py): BLEU on normal text with and without it, and
the number of degenerate outputs on held-out text before and after.

Every set is decoded twice by the service's engine on one bundle (greedy, the default decoding;
`--beam N` adds beam search on the first normal set): without the guard (`Translator.loop_guard` None)
and with the engine's default one (or `--ngram`, `--copies`, `--piece-copies`). Batches of 32
sentences of neighbouring lengths, as `decoding_quality.py`. Besides BLEU and the degenerate
outputs, each run counts the outputs cut at their output-length limit (a looping model runs to
it: a sign of loops that does not depend on the criterion below).

* Normal text: Tatoeba valid (short everyday sentences, the domain the model was trained on),
  corpus sacreBLEU of both runs and the outputs the guard changed.
* Held-out text: sentences unlike the training data, where small models loop: the l10n valid
  sets (software and documentation, every direction of the bundle) and newstest2014 (news;
  2008-2012 are training data, 2013 the validation set), `--held-out-limit` each.

An output is **degenerate** when it holds one of these repeats and its source does not (a
source with "------" or "ha ha ha" may have them translated): a sequence of 1-4 words (split on
white space) 3 times in a row ("the the the", "of the form of the form of the form"); one
character 6 times in a row ("adddddded", "的的的的的的"); a sequence of 2-4 characters 4 times
in a row ("wowowowo", text without spaces). The criterion reads the text, not the pieces the
guard counts, and is stricter than the guard (3 copies of a word sequence, the guard bans the
4th copy of a sequence of up to 4 pieces).

    python -m benchmarks.loop_guard --bundle model/multi --threads 1 --beam 4 --compare \
        --out benchmarks/results/loop_guard.json

`--compare` also sets the rules the guard could have had side by side on the held-out sets
(`--compare-limit` sentences each): banning other numbers of copies, and stopping a row at its
first repeat of 1-4 pieces x 4 with the repeat cut to one copy (computed from the unguarded
greedy outputs: a row's output is theirs up to that point). Each ban rule's `risk`: the
references of the normal and held-out sets and `--europarl` sentences of English (normal text,
no source) that it would forbid, i.e. the real repeats it would ban.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

import sacrebleu

from benchmarks.common import open_translator
from benchmarks.machine import describe
from service.runtime.loop_guard import DEFAULT, LoopGuard, row_bans
from training.data import read_lines

DATA = Path("../shared/data")
WORD_COPIES, CHAR_RUN, CHARS_COPIES = 3, 6, 4


def repeats(text: str) -> list[tuple[str, str]]:
    """The repeats of the criterion in `text`: ("w", words) and ("c", characters)."""
    found = []
    words = text.split()
    for n in range(1, 5):
        for i in range(len(words) - n * WORD_COPIES + 1):
            unit = words[i : i + n]
            if all(words[i + j * n : i + (j + 1) * n] == unit for j in range(1, WORD_COPIES)):
                found.append(("w", " ".join(unit)))
    found += [("c", m.group(1)) for m in re.finditer(rf"(.)\1{{{CHAR_RUN - 1},}}", text)]
    found += [("c", m.group(1)) for m in re.finditer(rf"(.{{2,4}}?)\1{{{CHARS_COPIES - 1},}}", text)]
    return found


def degenerate(source: str, output: str) -> bool:
    """Whether `output` holds a repeat of the criterion that `source` does not."""
    src_words = " ".join(source.split())
    for kind, unit in repeats(output):
        copies = (
            " ".join([unit] * WORD_COPIES) if kind == "w" else unit * (CHAR_RUN if len(unit) == 1 else CHARS_COPIES)
        )
        if copies not in (src_words if kind == "w" else source):
            return True
    return False


def bleu(hyps: list[str], refs: list[str], target: str) -> float:
    return round(sacrebleu.corpus_bleu(hyps, [refs], tokenize="zh" if target == "zh" else "13a").score, 2)


def decode(engine, sources: list[list[int]], guard: LoopGuard | None, beam: int, batch: int = 32) -> tuple:
    """Each source's best output (ids) with `guard` on the engine, and the seconds it took."""
    engine.loop_guard = guard
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    out: list[list[int]] = [[] for _ in sources]
    t0 = time.perf_counter()
    for start in range(0, len(order), batch):
        chunk = order[start : start + batch]
        part = [sources[i] for i in chunk]
        found = engine.generate(part) if beam < 2 else [h[0].tokens for h in engine.generate_nbest(part, beam)]
        for i, tokens in zip(chunk, found):
            out[i] = tokens
    return out, time.perf_counter() - t0


def sets(directions: list[str], limit: int) -> tuple[list[tuple], list[tuple]]:
    """(name, source file, reference file, target, limit) of the normal and held-out sets."""
    normal, held_out = [], []
    for pair, folder in (("de-en", "tatoeba-de-en"), ("fr-en", "tatoeba-fr-en")):
        src, tgt = pair.split("-")
        for a, b in ((src, tgt), (tgt, src)):
            if f"{a}-{b}" in directions:
                normal.append(
                    (f"tatoeba-valid {a}-{b}", DATA / folder / f"valid.{a}.gz", DATA / folder / f"valid.{b}.gz", b, 0)
                )
    for xx in ("de", "fr", "cs", "zh"):
        for a, b in ((xx, "en"), ("en", xx)):
            if f"{a}-{b}" in directions:
                base = DATA / "l10n" / f"valid.{xx}-en"
                held_out.append((f"l10n-valid {a}-{b}", Path(f"{base}.{a}.gz"), Path(f"{base}.{b}.gz"), b, limit))
    for xx in ("de", "fr", "cs"):
        if f"{xx}-en" in directions:
            base = DATA / "newstest" / f"{xx}-en" / "newstest2014"
            held_out.append((f"newstest2014 {xx}-en", Path(f"{base}.{xx}.gz"), Path(f"{base}.en.gz"), "en", limit))
    return normal, held_out


def measure(engine, name, src_file, ref_file, target, limit, guard: LoopGuard, beam: int = 1) -> dict:
    sources, refs = read_lines(src_file), read_lines(ref_file)
    if limit:
        sources, refs = sources[:limit], refs[:limit]
    ids = engine.encode([engine.manifest.model_input(s, target) for s in sources])
    limits = [engine.output_limit(len(x)) for x in ids]
    row: dict = {"set": name, "sentences": len(sources), "beam": beam}
    texts = {}
    for how, g in (("without", None), ("with", guard)):
        out, seconds = decode(engine, ids, g, beam)
        texts[how] = engine.text.decode(out)
        row[f"bleu_{how}"] = bleu(texts[how], refs, target)
        row[f"degenerate_{how}"] = sum(degenerate(s, o) for s, o in zip(sources, texts[how]))
        row[f"at_limit_{how}"] = sum(len(o) >= n for o, n in zip(out, limits))
        row[f"seconds_{how}"] = round(seconds, 2)
    engine.loop_guard = guard
    changed = [i for i, (a, b) in enumerate(zip(texts["without"], texts["with"])) if a != b]
    row["changed"] = len(changed)
    print(json.dumps(row), flush=True)
    row["examples"] = [
        {"source": sources[i], "without": texts["without"][i], "with": texts["with"][i]} for i in changed[:3]
    ]
    return row


# the rules set side by side (--compare): a LoopGuard bans, ("stop", guard) stops and cuts
RULES: dict[str, LoopGuard | tuple[str, LoopGuard]] = {
    "ban one piece x4, 2-8 pieces x3 (the default)": DEFAULT,
    "ban one piece x4, 2-4 pieces x3": LoopGuard(4, 3, 4),
    "ban 1-4 pieces x4": LoopGuard(4, 4, 4),
    "ban 1-4 pieces x3": LoopGuard(4, 3, 3),
    "stop at 1-4 pieces x4, cut the repeat": ("stop", LoopGuard(4, 4, 4)),
}


def stopped(tokens: list[int], guard: LoopGuard) -> list[int]:
    """`tokens` (an unguarded greedy output) stopped where they first end with a forbidden repeat,
    that repeat cut to one copy."""
    for t in range(len(tokens)):
        if tokens[t] in row_bans(tokens[:t], guard):
            end = t + 1
            for n in range(1, guard.max_ngram + 1):  # the unit whose copies ended here
                k = guard.copies_of(n)
                if end >= k * n and tokens[end - k * n + n : end] == tokens[end - k * n : end - n]:
                    return tokens[: end - (k - 1) * n]
    return tokens


def forbidden(sp_ids: list[list[int]], sources: list[list[int]], guard: LoopGuard) -> int:
    """How many of the texts (piece ids; with their sources' ids, or none) `guard` forbids."""
    return sum(
        any(ids[t] in row_bans(ids[:t], guard, src) for t in range(len(ids))) for ids, src in zip(sp_ids, sources)
    )


def compare(engine, held_out: list[tuple], normal: list[tuple], limit: int, europarl: int) -> dict:
    """Each rule of RULES on the held-out sets (`limit` sentences each): degenerate outputs, outputs
    at their limit, BLEU per set; and each ban rule's risk on references and Europarl."""
    rules: dict = {name: {"degenerate": 0, "at_limit": 0, "bleu": {}} for name in ["none", *RULES]}
    out: dict = {"sentences": 0, "rules": rules}
    refs_ids: list[list[int]] = []  # the references' pieces, and their sources' ids (the risk)
    srcs_ids: list[list[int]] = []
    for k, (name, src_file, ref_file, target, n) in enumerate(held_out + normal):
        held = k < len(held_out)
        sources, refs = read_lines(src_file)[: limit if held else n or None], read_lines(ref_file)
        refs = refs[: len(sources)]
        ids = engine.encode([engine.manifest.model_input(x, target) for x in sources])
        refs_ids += engine.text.target.ids(refs, None)
        srcs_ids += ids
        if not held:
            continue
        out["sentences"] += len(sources)
        limits = [engine.output_limit(len(x)) for x in ids]
        plain, _ = decode(engine, ids, None, 1)
        for rule, how in [("none", None), *RULES.items()]:
            if isinstance(how, tuple):
                found = [stopped(o, how[1]) for o in plain]
            else:
                found = plain if how is None else decode(engine, ids, how, 1)[0]
            texts = engine.text.decode(found)
            rules[rule]["degenerate"] += sum(degenerate(x, o) for x, o in zip(sources, texts))
            rules[rule]["at_limit"] += sum(len(o) >= m for o, m in zip(found, limits))
            rules[rule]["bleu"][name] = bleu(texts, refs, target)
        print(json.dumps({"set": name, **{r: v["degenerate"] for r, v in rules.items()}}), flush=True)
    engine.loop_guard = DEFAULT
    parl = read_lines(DATA / "europarl-en" / "part-00.en.gz")[:europarl] if europarl else []
    parl_ids = engine.text.target.ids(parl, None) if parl else []
    for rule, how in RULES.items():
        if isinstance(how, LoopGuard):
            rules[rule]["risk"] = {
                "references": forbidden(refs_ids, srcs_ids, how),
                "references_of": len(refs_ids),
                "europarl": forbidden(parl_ids, [[] for _ in parl_ids], how),
                "europarl_of": len(parl_ids),
            }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default="model/multi")
    p.add_argument("--variant")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ngram", type=int, default=DEFAULT.max_ngram, help="the guard's longest unit, in pieces")
    p.add_argument("--copies", type=int, default=DEFAULT.copies, help="copies in a row of 2+ pieces it bans")
    p.add_argument("--piece-copies", type=int, default=DEFAULT.piece_copies, help="copies of one piece it bans")
    p.add_argument("--normal-limit", type=int, default=2000, help="Tatoeba sentences per direction (0: all)")
    p.add_argument("--held-out-limit", type=int, default=1000, help="sentences per held-out set (0: all)")
    p.add_argument("--beam", type=int, default=0, help="also beam search of this width on the first normal set")
    p.add_argument("--compare", action="store_true", help="also other rules side by side (see above)")
    p.add_argument("--compare-limit", type=int, default=500, help="sentences per held-out set for --compare")
    p.add_argument("--europarl", type=int, default=20000, help="Europarl sentences for --compare's risk")
    p.add_argument("--out")
    a = p.parse_args()
    engine = open_translator(a.bundle, a.threads, a.variant)
    guard = LoopGuard(a.ngram, a.copies, a.piece_copies)
    directions = engine.manifest.directions or [f"{engine.manifest.source_lang}-{engine.manifest.target_lang}"]
    normal, held_out = sets(directions, a.held_out_limit)
    normal = [(n, s, r, t, a.normal_limit) for n, s, r, t, _ in normal]
    t0 = time.perf_counter()
    result: dict = {
        "command": "python -m benchmarks.loop_guard " + shlex.join(sys.argv[1:]),
        "machine": describe(),
        "bundle": a.bundle,
        "variant": engine.variant,
        "threads": a.threads,
        "guard": asdict(guard),
        "criterion": {"word_copies": WORD_COPIES, "char_run": CHAR_RUN, "chars_copies": CHARS_COPIES},
        "normal": [measure(engine, *s, guard) for s in normal],
        "held_out": [measure(engine, *s, guard) for s in held_out],
    }
    if a.beam > 1:  # the first normal set only (beam search takes a few times longer)
        result[f"normal_beam{a.beam}"] = [measure(engine, *s, guard, a.beam) for s in normal[:1]]
    rows = result["held_out"]
    keys = ("sentences", "degenerate_without", "degenerate_with", "at_limit_without", "at_limit_with", "changed")
    result["held_out_total"] = {k: sum(r[k] for r in rows) for k in keys}
    if a.compare:
        result["compare"] = compare(engine, held_out, normal, a.compare_limit, a.europarl)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result["held_out_total"]))
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
