"""Glossary terms through the shipped model: with and without a request `glossary`.

The terms: the l10n data's own terminology (`../shared/data/l10n`, README.md there): the
`libreoffice-ui` pairs of the `train` split whose two sides are 1-3 words of letters (a menu
item, a label: "Spreadsheet" / "Tabellendokument"), the English side at least 4 letters, neither
end a function word, the two sides different, and one-to-one in that source (the English string is
translated one way only, and that translation is of no other English string): the product's
own fixed translations. The sentences: the pairs of one held-out split (`--split`: `test`, the
figures reported; `valid` to try changes on) (LibreOffice help, manual pages, package
descriptions...) whose source holds a term (as the service matches it: whole words,
case-insensitive, a plural ending tolerated) and whose reference holds its translation exactly
(the reference uses the term as asked), a term inside a protected span (a URL...) not counted
(the service leaves those as they are); the longest such term per sentence, at most `--limit`
sentences per direction in file order. Both directions of each pair (en->xx with the term, and
xx->en with the term reversed).

Each sentence goes through the service's own path (an in-process app, `POST /translate`),
without and with `glossary: [{source: term, target: translation}]`. Per direction: term used as
asked (% of outputs holding the translation exactly; `_ci`: ignoring case), sacreBLEU against
the reference, and the BLEU of the rest (`bleu_masked`: every occurrence of the translation
taken out of outputs and references, case-insensitive, so that the term itself does not count).
Noise: a paired bootstrap over the sentences (`BOOTSTRAP` resamples, one seed): the 95% interval
of each BLEU difference with - without (`bleu_delta_ci95`, `bleu_masked_delta_ci95`); a
difference whose interval holds 0 is within noise. `identical`: outputs with the glossary that
are exactly those without it.

    python -m benchmarks.glossary --l10n ../shared/data/l10n --model model/multi --limit 100 \\
        --out benchmarks/results/glossary.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import sacrebleu
from fastapi.testclient import TestClient

from benchmarks.machine import describe
from benchmarks.pipeline import served
from service import glossary, protect

PAIRS = ("de", "fr")
TERM_SOURCE = "libreoffice-ui"
BOOTSTRAP = 1000
_TERM = re.compile(r"^[^\W\d_]+(?:[ -][^\W\d_]+){0,2}$")
STOP = set(
    "the and all none with from into this that your other more less some none each also only then than "
    "when what which where there here about after before over under a an to of in on for by is not like as at or "
    "it be".split()
)


def _lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return f.read().split("\n")[:-1]


def terms(l10n: Path, lang: str) -> dict[str, str]:
    """The one-to-one UI terms of `lang`-en, English -> `lang`."""
    stem = l10n / f"train.{lang}-en"
    en, xx, src = (_lines(Path(f"{stem}.{s}.gz")) for s in ("en", lang, "source"))
    forward: dict[str, set[str]] = defaultdict(set)
    backward: dict[str, set[str]] = defaultdict(set)
    shown: dict[str, tuple[str, str]] = {}
    for e, x, s in zip(en, xx, src):
        if s != TERM_SOURCE:
            continue
        e, x = e.strip(), x.strip()
        if not (_TERM.match(e) and _TERM.match(x)) or e.casefold() == x.casefold():
            continue
        ends = e.casefold().split()
        if sum(ch.isalpha() for ch in e) < 4 or ends[0] in STOP or ends[-1] in STOP:
            continue
        forward[e.casefold()].add(x.casefold())
        backward[x.casefold()].add(e.casefold())
        shown.setdefault(e.casefold(), (e, x))
    return {
        shown[e][0]: shown[e][1] for e, xs in forward.items() if len(xs) == 1 and len(backward[next(iter(xs))]) == 1
    }


def corpus(l10n: Path, lang: str, found: dict[str, str], limit: int, source: str, split: str = "test") -> list[dict]:
    """Held-out pairs (`split`) whose `source`-language side holds a term and whose other side its
    translation."""
    stem = l10n / f"{split}.{lang}-en"
    en, xx, origin = (_lines(Path(f"{stem}.{s}.gz")) for s in ("en", lang, "source"))
    target = "en" if source == lang else lang
    pairs = found if source == "en" else {x: e for e, x in found.items()}
    matcher = glossary.Terms([{glossary.words(s): t for s, t in pairs.items()}])
    inverse = {t: s for s, t in pairs.items()}  # one-to-one
    out: list[dict] = []
    for e, x, o in zip(en, xx, origin):
        text, ref = (e, x) if source == "en" else (x, e)
        matches = matcher.find(text)
        free = set(protect.terms_free(text, [(a, b) for a, b, _ in matches]))  # not in a URL: the service's too
        hits = [(b - a, t, text[a:b]) for a, b, t in matches if t in ref and (a, b) in free]
        if not hits:
            continue
        _, term_target, matched = max(hits)
        out.append(
            {source: text, target: ref, "term": inverse[term_target], "matched": matched, "translation": term_target}
            | {"origin": o}
        )
        if len(out) >= limit:
            break
    return out


def _translate(client: TestClient, items: list[dict], source: str, target: str, with_glossary: bool) -> list[str]:
    out: list[str] = []
    for item in items:
        body: dict = {"q": item[source], "source": source, "target": target}
        if with_glossary:
            body["glossary"] = [{"source": item["term"], "target": item["translation"]}]
        r = client.post("/translate", json=body)
        r.raise_for_status()
        out.append(r.json()["translatedText"])
    return out


def _bleu(hyps: list[str], refs: list[str]) -> float:
    return round(sacrebleu.corpus_bleu(hyps, [refs]).score, 2)


def _delta_ci(without: list[str], with_: list[str], refs: list[str], seed: int = 1) -> list[float]:
    """The 95% interval of corpus BLEU(with) - BLEU(without) over paired bootstrap resamples of
    the sentences."""
    bleu = sacrebleu.BLEU()
    a, b = (np.array(bleu._extract_corpus_statistics(h, [refs]), dtype=np.int64) for h in (without, with_))
    rng = np.random.default_rng(seed)
    deltas = []
    for _ in range(BOOTSTRAP):
        pick = rng.integers(0, len(refs), len(refs))
        score = [bleu._compute_score_from_stats(list(x[pick].sum(0))).score for x in (a, b)]
        deltas.append(score[1] - score[0])
    low, high = np.percentile(deltas, [2.5, 97.5])
    return [round(float(low), 2), round(float(high), 2)]


def _masked(text: str, term: str) -> str:
    return re.sub(r"\s+", " ", re.sub(re.escape(term), " ", text, flags=re.IGNORECASE)).strip()


def run(
    l10n: Path,
    model: Path,
    limit: int,
    threads: int = 1,
    examples: int = 5,
    split: str = "test",
    pairs: tuple[str, ...] = PAIRS,
) -> dict:
    with served(model, threads) as client:  # no cache: an answer without the glossary is not one with it
        return _measure(client, l10n, limit, examples, split, pairs)


def _measure(
    client: TestClient, l10n: Path, limit: int, examples: int, split: str = "test", pairs: tuple[str, ...] = PAIRS
) -> dict:
    directions: dict[str, dict] = {}
    glossaries: dict[str, int] = {}
    for lang in pairs:
        found = terms(l10n, lang)
        glossaries[f"en-{lang}"] = len(found)
        for src, tgt in (("en", lang), (lang, "en")):
            items = corpus(l10n, lang, found, limit, src, split)
            if not items:
                continue
            refs = [it[tgt] for it in items]
            row: dict = {
                "sentences": len(items),
                "distinct_terms": len({it["term"].casefold() for it in items}),
                "origins": dict(Counter(it["origin"] for it in items).most_common()),
            }
            outputs = {}
            for how in ("without", "with"):
                start = time.perf_counter()
                outputs[how] = out = _translate(client, items, src, tgt, how == "with")
                used = [it["translation"] in o for it, o in zip(items, out)]
                used_ci = [it["translation"].casefold() in o.casefold() for it, o in zip(items, out)]
                row[how] = {
                    "term_used_pct": round(100 * sum(used) / len(items), 1),
                    "term_used_ci_pct": round(100 * sum(used_ci) / len(items), 1),
                    "bleu": _bleu(out, refs),
                    "bleu_masked": _bleu(
                        [_masked(o, it["translation"]) for o, it in zip(out, items)],
                        [_masked(r, it["translation"]) for r, it in zip(refs, items)],
                    ),
                    "seconds": round(time.perf_counter() - start, 1),
                }
            masked = {how: [_masked(o, it["translation"]) for o, it in zip(outputs[how], items)] for how in outputs}
            masked_refs = [_masked(r, it["translation"]) for r, it in zip(refs, items)]
            row["bleu_delta_ci95"] = _delta_ci(outputs["without"], outputs["with"], refs)
            row["bleu_masked_delta_ci95"] = _delta_ci(masked["without"], masked["with"], masked_refs)
            row["identical"] = sum(a == b for a, b in zip(outputs["without"], outputs["with"]))
            row["examples"] = [
                {
                    "source": it[src],
                    "term": f"{it['term']} -> {it['translation']}",
                    "reference": r,
                    "without": a,
                    "with": b,
                }
                for it, r, a, b in list(zip(items, refs, outputs["without"], outputs["with"]))[:examples]
            ]
            directions[f"{src}-{tgt}"] = row
    return {"glossary_terms": glossaries, "directions": directions}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--l10n", type=Path, default=Path("../shared/data/l10n"))
    ap.add_argument("--model", type=Path, default=Path("model/multi"))
    ap.add_argument("--limit", type=int, default=100, help="sentences per direction")
    ap.add_argument("--split", default="test", choices=("test", "valid"), help="held-out sentences from")
    ap.add_argument("--pairs", nargs="+", default=list(PAIRS), help="languages paired with English")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    found = run(args.l10n, args.model, args.limit, args.threads, split=args.split, pairs=tuple(args.pairs))
    result = {"model": str(args.model), "limit": args.limit, "split": args.split, **found}
    result["machine"] = describe()
    for name, d in result["directions"].items():
        a, b = d["without"], d["with"]
        print(
            f"{name}: {d['sentences']} sentences, term used {a['term_used_pct']}% -> {b['term_used_pct']}%, "
            f"BLEU {a['bleu']} -> {b['bleu']} (95% {d['bleu_delta_ci95']}), masked {a['bleu_masked']} -> "
            f"{b['bleu_masked']} (95% {d['bleu_masked_delta_ci95']}), identical {d['identical']}"
        )
    if args.out:
        args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
