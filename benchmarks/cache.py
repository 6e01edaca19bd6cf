"""The sentence translation cache (`TRANSERVE_CACHE_MB`, service/cache.py) on repeat-heavy
workloads, cache on vs off: throughput and median request latency, and that every answer with
the cache is the answer without it.

Two workloads, each against the service in its own process (`python -m service`, benchmarks/load.py
`Server`: one client over HTTP, one request after the other, so latency is the request's own;
the cache's counts from `/metrics`), en -> de on `model/multi`:

- `web`: a small documentation site, `--pages` HTML pages (`format: "html"`), each with the same
  navigation, header and footer (links, a cookie notice, a copyright line, a link inside a
  sentence) around its own content: `--paragraphs` paragraphs of the English side of the l10n
  test split (`test.de-en.en.gz`: help pages, manual pages, package descriptions), in file order.
  The site is translated twice: pass 1 (the first visitor of each page: the boilerplate repeats
  from page to page) and pass 2 (the same pages again: every sentence seen).
- `ui`: an application's UI strings, screen by screen: `--screens` requests of `--per-screen`
  strings each, drawn from a catalogue of `--catalogue` distinct UI strings with the heavy-tailed
  frequency of UI text (Zipf, exponent `--zipf`: a few labels on every screen, most strings on
  one or two). The catalogue is the English side of the UI sources of the l10n train split
  (libreoffice-ui, debian-mo, godot-editor, mediawiki: menu items, labels, messages), the first
  strings in file order (the file is shuffled). Not the test split the issue names: its README
  says it holds full-sentence sources only, deduplicated (1,974 distinct lines of 2,000), so it
  repeats too little to stand for a UI.

Sentences per request are the cache's lookups (hits + misses, the same for both runs: the same
texts). Each workload runs cache off, then on, then off and on again (`--rounds`), each in a
fresh server (an empty cache); figures per run and the median of the rounds.

    python -m benchmarks.cache --model model/multi --l10n ../shared/data/l10n --out benchmarks/results/cache.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.load import Server
from benchmarks.machine import describe

UI_SOURCES = ("libreoffice-ui", "debian-mo", "godot-editor", "mediawiki")

NAV = ["Home", "Documentation", "Download", "Community", "Support", "Blog", "About us", "Contact"]
HEADER = "Search the documentation"
FOOTER = [
    "This website uses cookies to improve your experience. By using the site you accept our cookie policy.",
    "Copyright © 2024 The Document Foundation. All rights reserved.",
    "Privacy policy",
    "Terms of use",
    "Imprint",
]
FOLLOW = 'Follow us on <a href="https://floss.social/@example">Mastodon</a> for news and releases.'


def _lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return f.read().split("\n")[:-1]


def web_pages(l10n: Path, pages: int, paragraphs: int) -> list[str]:
    """`pages` HTML pages: the same navigation, header and footer around `paragraphs` lines of
    the test split each (the first as the page's title)."""
    content = _lines(l10n / "test.de-en.en.gz")
    nav = "".join(f'<li><a href="/{k}">{label}</a></li>' for k, label in enumerate(NAV))
    footer = "".join(f"<p>{line}</p>" for line in FOOTER) + f"<p>{FOLLOW}</p>"
    out = []
    for p in range(pages):
        own = content[p * paragraphs : (p + 1) * paragraphs]
        body = f"<h1>{own[0]}</h1>" + "".join(f"<p>{line}</p>" for line in own[1:])
        out.append(
            f'<header><nav><ul>{nav}</ul></nav><input placeholder="x"><p>{HEADER}</p></header>'
            f"<main>{body}</main><footer>{footer}</footer>"
        )
    return out


def ui_screens(
    l10n: Path, catalogue: int, screens: int, per_screen: int, zipf: float, seed: int = 1
) -> list[list[str]]:
    """`screens` lists of `per_screen` UI strings drawn from the first `catalogue` distinct UI
    strings of the train split, string k (in a random order) with weight 1 / (k + 1)^zipf."""
    sources = _lines(l10n / "train.de-en.source.gz")
    strings: list[str] = []
    seen: set[str] = set()
    for text, source in zip(_lines(l10n / "train.de-en.en.gz"), sources):
        if source in UI_SOURCES and len(text) <= 120 and text not in seen:
            seen.add(text)
            strings.append(text)
            if len(strings) == catalogue:
                break
    rng = random.Random(seed)
    rng.shuffle(strings)
    weights = [1 / (k + 1) ** zipf for k in range(len(strings))]
    return [rng.choices(strings, weights, k=per_screen) for _ in range(screens)]


def _counts(client: httpx.Client) -> tuple[int, int, int, int]:
    """The cache's sentence hits and misses, and its alignment hits and misses (format=html)."""
    found = {
        (sample.name, sample.labels.get("kind")): int(sample.value)
        for family in text_string_to_metric_families(client.get("/metrics").text)
        for sample in family.samples
        if sample.name in ("transerve_cache_hits_total", "transerve_cache_misses_total")
    }
    return tuple(  # type: ignore[return-value]
        found.get((f"transerve_cache_{n}_total", kind), 0)
        for kind in ("sentence", "alignment")
        for n in ("hits", "misses")
    )


def _run(client: httpx.Client, bodies: list[dict]) -> dict:
    """Each body posted in turn: seconds per request, the answers, and the cache's counts."""
    before = _counts(client)
    seconds, answers = [], []
    t0 = time.perf_counter()
    for body in bodies:
        t = time.perf_counter()
        r = client.post("/translate", json=body)
        seconds.append(time.perf_counter() - t)
        r.raise_for_status()
        answers.append(r.json())
    wall = time.perf_counter() - t0
    hits, misses, align_hits, align_misses = (a - b for a, b in zip(_counts(client), before))
    return {
        "wall": wall,
        "seconds": seconds,
        "answers": answers,
        "hits": hits,
        "misses": misses,
        "align_hits": align_hits,
        "align_misses": align_misses,
    }


def _figures(run: dict, sentences: int) -> dict:
    return {
        "requests": len(run["seconds"]),
        "sentences": sentences,
        "seconds": round(run["wall"], 3),
        "sentences_per_s": round(sentences / run["wall"], 1),
        "requests_per_s": round(len(run["seconds"]) / run["wall"], 2),
        "p50_ms": round(1000 * statistics.median(run["seconds"]), 1),
        "p90_ms": round(1000 * statistics.quantiles(run["seconds"], n=10)[-1], 1),
        "hits": run["hits"],
        "misses": run["misses"],
        "align_hits": run["align_hits"],
        "align_misses": run["align_misses"],
    }


def measure(
    model: Path, workloads: dict[str, list[list[dict]]], rounds: int, threads: int, cache_mb: int, log: Callable
) -> dict:
    """Each workload (its passes: lists of request bodies) cache off and on, `rounds` times,
    alternating, each run in a fresh app; per pass the figures, and whether the answers agree."""
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"  # the one bundle
        models.mkdir()
        (models / model.name).symlink_to(model.resolve())
        warm = [{"q": ["Der Hund läuft über die Straße.", "Ein Kind spielt."], "source": "de", "target": "en"}]
        for name, passes in workloads.items():
            runs: dict[str, list[list[dict]]] = {"off": [], "on": []}
            reference: list[list[dict]] | None = None
            sentences: list[int] = []
            for r in range(rounds):
                for mode, mb in (("off", 0), ("on", cache_mb)):
                    server = Server(models, threads, decode_workers=1, cache_mb=mb)
                    try:
                        with httpx.Client(base_url=server.base, timeout=120) as client:
                            _run(client, warm)
                            done = [_run(client, bodies) for bodies in passes]
                    finally:
                        server.stop()
                    answers = [d["answers"] for d in done]
                    if reference is None:
                        reference = answers
                    elif answers != reference:
                        raise AssertionError(f"{name}: answers differ with the cache {mode} (round {r})")
                    if mode == "on":
                        sentences = [d["hits"] + d["misses"] for d in done]
                    runs[mode].append(done)
            table: dict = {}
            for mode, done_runs in runs.items():
                for p in range(len(passes)):
                    rows = [_figures(done[p], sentences[p]) for done in done_runs]
                    table[f"pass{p + 1}_{mode}"] = {
                        "runs": rows,
                        "sentences_per_s": round(statistics.median(x["sentences_per_s"] for x in rows), 1),
                        "p50_ms": round(statistics.median(x["p50_ms"] for x in rows), 1),
                    }
                    log(f"{name} pass {p + 1} cache {mode}: {table[f'pass{p + 1}_{mode}']}")
            for p in range(len(passes)):
                off, on = table[f"pass{p + 1}_off"], table[f"pass{p + 1}_on"]
                table[f"pass{p + 1}_speedup"] = {
                    "throughput": round(on["sentences_per_s"] / off["sentences_per_s"], 2),
                    "p50": round(off["p50_ms"] / on["p50_ms"], 2),
                }
            table["answers_identical"] = True  # checked above: every run's answers equal the first's
            out[name] = table
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path("model/multi"))
    ap.add_argument("--l10n", type=Path, default=Path("../shared/data/l10n"))
    ap.add_argument("--pages", type=int, default=20)
    ap.add_argument("--paragraphs", type=int, default=4)
    ap.add_argument("--catalogue", type=int, default=400)
    ap.add_argument("--screens", type=int, default=200)
    ap.add_argument("--per-screen", type=int, default=12)
    ap.add_argument("--zipf", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache-mb", type=int, default=64)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    pages = web_pages(args.l10n, args.pages, args.paragraphs)
    page_bodies = [{"q": page, "source": "en", "target": "de", "format": "html"} for page in pages]
    screens = ui_screens(args.l10n, args.catalogue, args.screens, args.per_screen, args.zipf)
    workloads = {
        "web": [page_bodies, page_bodies],  # the site, then the site again
        "ui": [[{"q": screen, "source": "en", "target": "de"} for screen in screens]],
    }
    distinct = len({s for screen in screens for s in screen})
    result = {
        "command": "python -m benchmarks.cache " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": describe(),
        "model": str(args.model),
        "settings": {"threads": args.threads, "decode_workers": 1, "cache_mb": args.cache_mb},
        "workloads": {
            "web": {"pages": args.pages, "paragraphs_per_page": args.paragraphs, "passes": 2},
            "ui": {
                "catalogue": args.catalogue,
                "screens": args.screens,
                "strings_per_screen": args.per_screen,
                "zipf": args.zipf,
                "distinct_strings_requested": distinct,
            },
        },
        "load_average_before": os.getloadavg(),  # anything else running (a training job) slows both modes
        "results": measure(args.model, workloads, args.rounds, args.threads, args.cache_mb, print),
    }
    result["load_average_after"] = os.getloadavg()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    return result


if __name__ == "__main__":
    main()
