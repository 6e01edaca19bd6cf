"""Placeholders of real software strings through the shipped model, with and without protection.

The corpus: pairs of the l10n data (`../shared/data/l10n`, README.md there) held out of the
training, whose two sides hold the same placeholders (service/protect.placeholders: `{0}`,
`%s`, `%1$s`, `$var`, `:name`, tags...): the `test` split first, then the `wesnoth` source of the
`train` split (every l10n training config reads `train` with `drop=wesnoth`), at most `--limit`
pairs per language pair, in file order. Each pair is translated both ways (en->xx with the xx
side as reference, xx->en with the English one) through the service's own path (an in-process
app, `POST /translate`): with the stages as shipped (`protected`), and with every sentence
translated whole and nothing protected (`unprotected`). Per direction: strings, placeholders
kept (a translation keeps them when it holds each placeholder of its source byte for byte,
exactly as often), and sacreBLEU against the reference (zh: its zh tokenizer), also apart for the
test split's strings (`bleu_test`: documentation) and the wesnoth ones (`bleu_train`: UI text).

    python -m benchmarks.placeholders --l10n ../shared/data/l10n --model model/multi --limit 100 \\
        --out benchmarks/results/placeholders.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sacrebleu
from fastapi.testclient import TestClient

from benchmarks.machine import describe
from benchmarks.pipeline import served
from service import protect, translation
from service.registry import Route
from service.state import ServiceState

PAIRS = ("de", "fr", "cs", "zh")
HELD_OUT_SOURCE = "wesnoth"  # in the train files, dropped by every training config


def _lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return f.read().split("\n")[:-1]


def corpus(l10n: Path, lang: str, limit: int) -> list[dict]:
    """The held-out pairs of `lang`-en whose sides hold the same placeholders, test split first."""
    out: list[dict] = []
    for split, only in (("test", None), ("train", HELD_OUT_SOURCE)):
        stem = l10n / f"{split}.{lang}-en"
        if not Path(f"{stem}.en.gz").exists():
            continue
        en, xx = _lines(Path(f"{stem}.en.gz")), _lines(Path(f"{stem}.{lang}.gz"))
        sources = _lines(Path(f"{stem}.source.gz"))
        for e, x, source in zip(en, xx, sources):
            if only and source != only:
                continue
            found = protect.placeholders(e)
            if found and Counter(found) == Counter(protect.placeholders(x)):
                out.append({"en": e, lang: x, "split": split, "source": source})
            if len(out) >= limit:
                return out
    return out


def placeholders_kept(source: str, translation: str) -> tuple[bool, int, int]:
    """Whether `translation` holds each placeholder of `source` exactly as often; how many of
    the source's placeholders it holds, of how many."""
    want = Counter(protect.placeholders(source))
    got = Counter(p for p in protect.placeholders(translation) if p in want)
    return got == want, sum(min(n, got[p]) for p, n in want.items()), sum(want.values())


async def _whole(
    state: ServiceState, route: Route, sentences: list[translation.Sentence], how: translation.Decoding
) -> None:
    """The unprotected stage: every sentence translated whole, as the model gives it."""
    found = await translation._through(state, route, [s.source for s in sentences], how)
    for s, (hyps, factor) in zip(sentences, found):
        s.hyps, s.factor = hyps, factor


@contextmanager
def unprotected() -> Iterator[None]:
    shipped = translation.STAGES
    translation.STAGES = (_whole,)
    try:
        yield
    finally:
        translation.STAGES = shipped


def _translate(client: TestClient, texts: list[str], source: str, target: str, chunk: int = 16) -> list[str]:
    out: list[str] = []
    for at in range(0, len(texts), chunk):
        body = {"q": texts[at : at + chunk], "source": source, "target": target, "format": "text"}
        r = client.post("/translate", json=body)
        r.raise_for_status()
        out += r.json()["translatedText"]
    return out


def _bleu(hyps: list[str], refs: list[str], target: str) -> float:
    return round(sacrebleu.corpus_bleu(hyps, [refs], tokenize="zh" if target == "zh" else "13a").score, 2)


def run(l10n: Path, model: Path, limit: int, threads: int = 1, examples: int = 5) -> dict:
    with served(model, threads) as client:  # no cache: the unprotected pass would answer the protected one
        return _measure(client, l10n, limit, examples)


def _measure(client: TestClient, l10n: Path, limit: int, examples: int) -> dict:
    directions: dict[str, dict] = {}
    origins: Counter[str] = Counter()
    for lang in PAIRS:
        pairs = corpus(l10n, lang, limit)
        origins.update(f"{lang}-en {p['split']}:{p['source']}" for p in pairs)
        for src, tgt in (("en", lang), (lang, "en")):
            if not pairs:
                continue
            sources, refs = [p[src] for p in pairs], [p[tgt] for p in pairs]
            row: dict = {"strings": len(pairs)}
            outputs = {}
            for how in ("unprotected", "protected"):
                start = time.perf_counter()
                if how == "unprotected":
                    with unprotected():
                        outputs[how] = _translate(client, sources, src, tgt)
                else:
                    outputs[how] = _translate(client, sources, src, tgt)
                kept = [placeholders_kept(s, t) for s, t in zip(sources, outputs[how])]
                row[how] = {
                    "strings_kept": sum(k[0] for k in kept),
                    "strings_kept_pct": round(100 * sum(k[0] for k in kept) / len(kept), 1),
                    "placeholders_kept": sum(k[1] for k in kept),
                    "placeholders": sum(k[2] for k in kept),
                    "bleu": _bleu(outputs[how], refs, tgt),
                    "seconds": round(time.perf_counter() - start, 1),
                }
                for split in ("test", "train"):  # the documentation strings and the UI strings apart
                    part = [k for k, p in enumerate(pairs) if p["split"] == split]
                    if part:
                        found = [outputs[how][k] for k in part]
                        row[how][f"bleu_{split}"] = _bleu(found, [refs[k] for k in part], tgt)
            row["examples"] = [
                {"source": s, "reference": r, "unprotected": u, "protected": p}
                for s, r, u, p in list(zip(sources, refs, outputs["unprotected"], outputs["protected"]))[:examples]
            ]
            directions[f"{src}-{tgt}"] = row
    total = {
        how: {
            "strings": sum(d["strings"] for d in directions.values()),
            "strings_kept": sum(d[how]["strings_kept"] for d in directions.values()),
            "placeholders_kept": sum(d[how]["placeholders_kept"] for d in directions.values()),
            "placeholders": sum(d[how]["placeholders"] for d in directions.values()),
        }
        for how in ("unprotected", "protected")
    }
    return {"corpus": dict(sorted(origins.items())), "total": total, "directions": directions}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--l10n", type=Path, default=Path("../shared/data/l10n"))
    ap.add_argument("--model", type=Path, default=Path("model/multi"))
    ap.add_argument("--limit", type=int, default=100, help="pairs per language pair")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    result = {"model": str(args.model), "limit": args.limit, **run(args.l10n, args.model, args.limit, args.threads)}
    result["machine"] = describe()
    for name, d in result["directions"].items():
        u, p = d["unprotected"], d["protected"]
        print(
            f"{name}: {d['strings']} strings, kept {u['strings_kept_pct']}% -> {p['strings_kept_pct']}%, "
            f"BLEU {u['bleu']} -> {p['bleu']}"
        )
    print("total:", result["total"])
    if args.out:
        args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
