"""Import translation models made elsewhere into bundles: ``python -m training import``.

    python -m training import argos PACKAGE|FILE.argosmodel|PACKAGES_FOLDER --out model/NAME
    python -m training import ct2 MODEL_DIR --source-spm S.model --target-spm T.model \
        --source-lang de --target-lang en --out model/NAME
    python -m training import marian HF_FOLDER --out model/NAME   (languages from opus-mt-xx-yy)

Every format is read by our own code (ct2.py: model.bin, config.json and vocabularies;
marian.py: config.json, safetensors or pytorch_model.bin, vocab.json; argos.py: package
metadata, zips, folders of packages); build.py makes our Transformer with the same weights and
exports it like any trained model, with its PyTorch weights beside the graphs (weights.pt: what
``train.init_from`` fine-tunes with the bundle's codec, training/tasks.py). ctranslate2 and
transformers are only used by ``--check`` (and the tests) to compare greedy outputs with the
original runtime. A refusal names what is not supported; nothing half-written is left under --out.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from training.importers.common import Imported, Refused

log = logging.getLogger(__name__)

KINDS = ("argos", "ct2", "marian")
CHECK_LIMIT = 64  # tokens each side may generate in --check


def read(kind: str, path: Path, source_spm: Path | None = None, target_spm: Path | None = None) -> Imported:
    """Read one model of `kind` (argos: one package folder, already unpacked)."""
    if kind == "ct2":
        from training.importers.ct2 import read_ct2

        imp = read_ct2(path)
        imp.source_spm, imp.target_spm = source_spm, target_spm or source_spm
        imp.info.setdefault("source_path", str(path))
        return imp
    if kind == "marian":
        from training.importers.marian import read_marian

        imp = read_marian(path)
        if source_spm:
            imp.source_spm = source_spm
        if target_spm:
            imp.target_spm = target_spm
        imp.info.setdefault("source_path", str(path))
        return imp
    raise ValueError(f"unknown import kind {kind!r} (one of {KINDS})")


def _agree(a: list[int], b: list[int], limit: int) -> bool:
    """Equal outputs, or equal up to the length limit where one side ran into it."""
    return a == b or (max(len(a), len(b)) >= limit - 1 and a[: limit - 1] == b[: limit - 1])


def check_agreement(kind: str, origin: Path, model, imp: Imported, texts: Sequence[str]) -> dict[str, Any]:
    """Our model's greedy tokens vs the original runtime's (ctranslate2 for argos/ct2, transformers
    for marian) on `texts`: the share of identical outputs. Needs the runtime installed."""
    import sentencepiece as spm
    import torch

    sp = spm.SentencePieceProcessor(model_file=str(imp.source_spm))
    src_index = {p: i for i, p in enumerate(imp.source_vocab)}
    unk = src_index.get(imp.unk_piece, 0)
    pieces = [sp.encode(t, out_type=str) for t in texts]
    ids = [
        ([src_index[imp.bos_piece]] if imp.add_source_bos else [])
        + [src_index.get(p, unk) for p in row]
        + ([src_index[imp.eos_piece]] if imp.add_source_eos else [])
        for row in pieces
    ]
    limit = min(CHECK_LIMIT, model.cfg.max_len)
    # the original runtimes have no loop guard: compared without ours
    ours = [
        model.greedy_decode(torch.tensor([row]), max_output_ratio=0, max_output_extra=limit, loop_guard=None)[0]
        for row in ids
    ]
    result: dict[str, Any] = {"sentences": len(texts)}
    if kind in ("argos", "ct2"):
        import ctranslate2

        model_dir = origin / "model" if kind == "argos" else origin
        tgt_index = {p: i for i, p in enumerate(imp.target_vocab)}
        for compute in ("float32", "default"):
            tr = ctranslate2.Translator(str(model_dir), device="cpu", compute_type=compute, intra_threads=2)
            out = tr.translate_batch(pieces, beam_size=1, max_decoding_length=limit, min_decoding_length=0)
            theirs = [[tgt_index[t] for t in r.hypotheses[0]] for r in out]
            same = sum(_agree(a, b, limit) for a, b in zip(ours, theirs))
            result[f"ctranslate2_{compute}"] = round(same / max(len(texts), 1), 4)
    else:
        from transformers import MarianMTModel

        hf = MarianMTModel.from_pretrained(str(origin)).eval()
        bad = [[i] for i in imp.banned] or None
        same = 0
        for row, mine in zip(ids, ours):
            with torch.no_grad():
                g = hf.generate(
                    torch.tensor([row]), num_beams=1, do_sample=False, max_new_tokens=limit, bad_words_ids=bad
                )[0].tolist()[1:]
            g = g[: g.index(imp.eos_id)] if imp.eos_id in g else g
            same += _agree(mine, g, limit)
        result["transformers"] = round(same / max(len(texts), 1), 4)
    return result


def _languages(
    kind: str, path: Path, imp: Imported, source_lang: str | None, target_lang: str | None
) -> tuple[str, str]:
    pkg = imp.info.get("package_codes")
    if pkg:
        return source_lang or pkg[0], target_lang or pkg[1]
    if not (source_lang and target_lang):
        m = re.search(r"opus-mt-([a-z]{2,3})-([a-z]{2,3})$", path.name)
        if m:
            return source_lang or m.group(1), target_lang or m.group(2)
        raise Refused(f"{path}: pass --source-lang and --target-lang (the {kind} model does not say its languages)")
    return source_lang, target_lang


@dataclass(frozen=True)
class ImportOptions:
    """How to import: what `run_import`, `import_one` and ``python -m training import`` share.
    `source_spm`/`target_spm` only serve the readers (ct2 needs them; marian: instead of the
    folder's own); the rest go to every model of an import (each package of an argos folder)."""

    source_spm: Path | None = None
    target_spm: Path | None = None
    source_lang: str | None = None
    target_lang: str | None = None
    license_text: str = ""
    valid_source: Sequence[str] | None = None
    valid_target: Sequence[str] | None = None
    force: bool = False
    check: bool = False
    max_len: int = 512
    int8: bool = True
    keep_all_variants: bool = False
    # the PyTorch weights beside the graphs (weights.pt, float16 as our releases'): what
    # train.init_from fine-tunes; not served, not in the manifest's files
    weights: bool = True

    @classmethod
    def from_args(cls, args: Any) -> ImportOptions:
        """The options of ``python -m training import``'s parsed arguments."""

        def lines(path: str | None) -> list[str] | None:
            return Path(path).read_text(encoding="utf-8").splitlines() if path else None

        return cls(
            source_spm=Path(args.source_spm) if args.source_spm else None,
            target_spm=Path(args.target_spm) if args.target_spm else None,
            source_lang=args.source_lang,
            target_lang=args.target_lang,
            license_text=args.license or "",
            valid_source=lines(args.valid_source),
            valid_target=lines(args.valid_target),
            force=args.force,
            check=args.check,
            max_len=args.max_len,
            int8=not args.no_int8,
            keep_all_variants=args.keep_all_variants,
            weights=not getattr(args, "no_weights", False),
        )


def import_one(
    kind: str, path: Path, out: Path, imp: Imported, origin: Path, options: ImportOptions = ImportOptions()
) -> dict[str, Any]:
    """One model read as `imp` (from `origin`) into the bundle `out`."""
    from training.importers.build import builtin_sentences, import_model, write_bundle

    o = options
    for side, spm_path in (("source", imp.source_spm), ("target", imp.target_spm)):
        if spm_path is None or not Path(spm_path).is_file():
            raise Refused(f"{path}: missing tokenizer: no {side} SentencePiece model ({spm_path or 'none given'})")
    src, tgt = _languages(kind, path, imp, o.source_lang, o.target_lang)
    model, done = import_model(imp, max_len=o.max_len)
    if o.check:
        texts = list(o.valid_source) if o.valid_source else builtin_sentences(src)[0]
        try:
            done.info["check"] = check_agreement(kind, origin, model, done, texts)
        except ImportError as e:
            raise Refused(f"--check needs the original runtime installed ({e.name}): pip install -e '.[dev]'") from None
        log.info("%s: agreement with the original runtime: %s", path, done.info["check"])
    result = write_bundle(
        model,
        done,
        out,
        name=out.name,
        source_lang=src,
        target_lang=tgt,
        license_text=o.license_text or done.info.get("license", ""),
        valid_source=o.valid_source,
        valid_target=o.valid_target,
        force=o.force,
        int8=o.int8,
        keep_all_variants=o.keep_all_variants,
        weights=o.weights,
    )
    if o.check:
        result["check"] = done.info["check"]
    return result


def run_import(
    kind: str, path: Path, out: Path, options: ImportOptions | None = None, **fields: Any
) -> list[dict[str, Any]]:
    """Import `path` into the bundle `out` (argos with several packages: one bundle per package
    under `out`). `fields`: ImportOptions fields, over `options`. Returns one result per model:
    the bundle and its figures, or the refusal."""
    o = replace(options or ImportOptions(), **fields)
    if kind != "argos":
        if kind == "ct2" and not o.source_spm:
            raise Refused("missing tokenizer: ct2 needs --source-spm (and --target-spm when the target's differs)")
        imp = read(kind, Path(path), o.source_spm, o.target_spm)
        return [import_one(kind, Path(path), out, imp, Path(path), o)]

    from training.importers.argos import find_packages, open_package, read_argos

    sources = find_packages(Path(path))
    many = Path(path).is_dir() and not (Path(path) / "metadata.json").is_file()
    results = []
    out.parent.mkdir(parents=True, exist_ok=True)
    for source in sources:
        work = Path(tempfile.mkdtemp(prefix=".import.", dir=out.parent))
        try:
            pkg = open_package(source, work)
            target = out / pkg.name if many else out
            imp = read_argos(pkg)
            imp.info["package_codes"] = (pkg.metadata["from_code"], pkg.metadata["to_code"])
            result = import_one("argos", source, target, imp, pkg.folder, o)
            result["package"] = str(source)
            results.append(result)
        except (Refused, FileExistsError, FileNotFoundError) as e:
            if not many:
                raise
            log.error("%s: %s", source, e)
            results.append({"package": str(source), "refused": str(e)})
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return results


__all__ = ["KINDS", "ImportOptions", "Imported", "Refused", "check_agreement", "import_one", "read", "run_import"]
