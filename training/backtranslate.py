"""Back-translation: synthetic source sentences for real target text (Sennrich et al. 2016).

    python -m training data backtranslate --bundle model/multi --into de \\
        --input ../shared/data/europarl-en/part-00.en.gz --limit 20000 --out runs/bt

translates English monolingual text into `--into` with a released bundle (the service's engine,
greedy, batched by length) and writes the pairs in the l10n layout as ``<xx>-en``: the machine
translation on the ``xx`` side, the real English on the ``en`` side, the source name ``bt`` on
every line, so a training set ``de-en runs/bt train.de-en into=en`` teaches the xx->en directions to
produce real, long English from imperfect input (`into=en`: the set's
``en-xx`` orientation would teach the model its own errors).

It runs in chunks and appends: stopped at any point, the same command continues after the last
whole chunk written (``train.<xx>-en.done`` counts the English lines consumed). A chunk cut short
by a kill leaves its lines in neither file, or (killed between the writes) the files of unequal
length, which the next start refuses."""

from __future__ import annotations

import gzip
import logging
import time
from pathlib import Path

from service.runtime.bundle import load_manifest, tag_source
from service.runtime.sessions import resolve_providers
from service.runtime.translator import Translator
from training.data import open_text

log = logging.getLogger(__name__)

CHUNK = 512  # sentences decoded and appended at a time
MAX_WORDS = 80  # longer lines are skipped: the bundle's 128-piece limit would cut them


def _count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return sum(1 for _ in f)


def english_lines(inputs: list[Path], limit: int) -> list[str]:
    """Up to `limit` non-empty lines of 3..MAX_WORDS words from the inputs, in order."""
    out: list[str] = []
    for path in inputs:
        with open_text(path) as f:
            for line in f:
                words = line.split()
                if 3 <= len(words) <= MAX_WORDS:
                    out.append(" ".join(words))
                    if len(out) >= limit:
                        return out
    return out


def backtranslate(
    bundle: Path, into: str, inputs: list[Path], out: Path, limit: int, threads: int = 0, batch: int = 32
) -> dict[str, int | float]:
    """Translate up to `limit` English lines of `inputs` into `into`; append the pairs to `out`."""
    manifest = load_manifest(bundle)
    if ("en", into) not in manifest.pairs():
        raise ValueError(f"{bundle} does not translate en->{into}: it has {manifest.directions}")
    lines = english_lines(inputs, limit)
    pair = f"{into}-en"
    paths = {side: out / f"train.{pair}.{side}.gz" for side in (into, "en", "source")}
    out.mkdir(parents=True, exist_ok=True)
    progress = out / f"train.{pair}.done"  # English lines consumed so far (whole chunks)
    done = int(progress.read_text()) if progress.exists() else 0
    if len({_count_lines(p) for p in paths.values()}) > 1:
        raise ValueError(f"{out}: the {pair} files differ in length; remove them and start again")
    engine = Translator(bundle, manifest, resolve_providers("cpu"), threads=threads)
    t0, tokens = time.perf_counter(), 0
    for start in range(done, len(lines), CHUNK):
        chunk = lines[start : start + CHUNK]
        order = sorted(range(len(chunk)), key=lambda i: len(chunk[i]))
        hyps = [""] * len(chunk)
        for b in range(0, len(order), batch):
            idx = order[b : b + batch]
            for i, h in zip(idx, engine.translate([tag_source(chunk[i], into) for i in idx])):
                hyps[i] = h
        kept = [(h, e) for h, e in zip(hyps, chunk) if h.strip()]
        tokens += sum(len(h.split()) for h, _ in kept)
        for side, col in ((into, 0), ("en", 1)):
            with gzip.open(paths[side], "at", encoding="utf-8") as f:
                f.write("".join(p[col] + "\n" for p in kept))
        with gzip.open(paths["source"], "at", encoding="utf-8") as f:
            f.write("bt\n" * len(kept))
        progress.write_text(str(start + len(chunk)))
        log.info("%s: %d of %d English lines translated into %s", out, start + len(chunk), len(lines), into)
    seconds = time.perf_counter() - t0
    return {"pairs": _count_lines(paths["en"]), "seconds": round(seconds, 1), "words": tokens}
