"""The training job's command line: ``python -m training --help``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("training")


def _config(args):
    from training.config import load_config

    return load_config(args.config, args.set)


def _run_dir(args, cfg) -> Path:
    return Path(args.run_dir) if args.run_dir else Path("runs") / cfg.name


def cmd_download(args) -> int:
    from training.data import download

    for path in download(args.corpus, Path(args.dest), force=args.force):
        print(path)
    return 0


def cmd_data(args) -> int:
    from training.catalogs import gettext_pairs, write_corpus, xliff_pairs

    inputs = [Path(p) for p in args.inputs]
    if args.format == "gettext":
        pairs = gettext_pairs(inputs, lang=args.lang, source=args.source)
    else:
        pairs = xliff_pairs(inputs, source=args.source)
    counts = write_corpus(pairs, Path(args.out), valid=args.valid, test=args.test)
    if not counts:
        raise ValueError(f"no translated entries with English on one side in {args.inputs}")
    for pair, splits in counts.items():
        shown = ", ".join(f"{split} {n}" for split, n in splits.items())
        print(f'{args.out}: {pair}: {shown}  (data.train_sets line: "{pair} {args.out} train.{pair}")')
    return 0


def cmd_backtranslate(args) -> int:
    from training.backtranslate import backtranslate

    result = backtranslate(
        Path(args.bundle), args.into, [Path(p) for p in args.input], Path(args.out), args.limit, args.threads
    )
    print(json.dumps(result))
    return 0


def cmd_tokenizer(args) -> int:
    from training.tasks import prepare_tokenizer

    cfg = _config(args)
    tok = prepare_tokenizer(cfg, _run_dir(args, cfg), force=args.force)
    print(f"{tok.path}: {tok.vocab_size} pieces")
    return 0


def cmd_train(args) -> int:
    from training.train import train

    cfg = _config(args)
    summary = train(cfg, _run_dir(args, cfg), resume=args.resume, device=args.device)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 reports
        print(json.dumps(summary, indent=2))
    return 0


def cmd_evaluate(args) -> int:
    cfg = _config(args)
    if args.bundle:
        from training.release import evaluate_bundle

        result = evaluate_bundle(Path(args.bundle), cfg, args.split, args.variant)
    else:
        import torch

        from training.checkpoint import model_from_checkpoint
        from training.evaluate import classification_metrics, classify, translate
        from training.tasks import make_task, run_tokenizer
        from training.tokenizer import CodecTokenizer

        run_dir = _run_dir(args, cfg)
        ckpt = Path(args.checkpoint) if args.checkpoint else run_dir / "best.pt"
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model = model_from_checkpoint(ckpt, device)
        tok = run_tokenizer(run_dir)  # a fine-tuned imported model: its bundle's codec
        task = make_task(cfg, tok)
        rows = task.raw(args.split)
        if cfg.task == "translation":
            if isinstance(tok, CodecTokenizer):  # encoded and decoded through the codec, as the service does
                hyps = task.translate(model, [r[0] for r in rows], device=device)
            else:
                hyps = translate(model, tok, [r[0] for r in rows], device=device)
            result = task.metrics(args.split, hyps, [r[1] for r in rows])
            if "per_direction" in result:  # multilingual: each direction's BLEU and chrF, and their mean
                result["per_direction"] = {
                    d: {"bleu": m["bleu"], "chrf": m["chrf"]} for d, m in result["per_direction"].items()
                }
            if args.output:
                Path(args.output).write_text("\n".join(hyps) + "\n", encoding="utf-8")
        else:
            probs = classify(model, tok, [r[0] for r in rows], device=device)
            result = classification_metrics(probs.argmax(1).tolist(), [r[1] for r in rows], cfg.data.labels)
        result["split"] = args.split
    if "confusion_matrix" in result:
        from training.evaluate import format_confusion

        print(format_confusion(result["confusion_matrix"], result["labels"]), file=sys.stderr)
    print(json.dumps({k: v for k, v in result.items() if k != "examples"}, indent=2, ensure_ascii=False))
    return 0


def cmd_export(args) -> int:
    from training.checkpoint import model_from_checkpoint
    from training.export import export_bundle
    from training.tasks import TOKENIZER_FILE, make_task, run_tokenizer, split_names
    from training.tokenizer import CodecTokenizer

    cfg = _config(args)
    run_dir = _run_dir(args, cfg)
    ckpt = Path(args.checkpoint) if args.checkpoint else run_dir / "best.pt"
    model = model_from_checkpoint(ckpt)
    tokenizer = run_tokenizer(run_dir)
    # a fine-tuned imported model: exported with its own codec, as release does
    imported = tokenizer if isinstance(tokenizer, CodecTokenizer) else None
    task = make_task(cfg, tokenizer)
    split = split_names(cfg)[1]
    texts = [r[0] for r in task.raw(split)[:50]]
    extra = [p for p in (run_dir / "curves.png",) if p.exists()] + (imported.export_files() if imported else [])
    out = Path(args.out) if args.out else Path("model") / cfg.name
    manifest, parity = export_bundle(
        model,
        cfg,
        run_dir / TOKENIZER_FILE,
        out,
        texts,
        force=args.force,
        int8=not args.no_int8,
        extra_files=extra,
        codec=imported.spec if imported else None,
    )
    print(json.dumps({"bundle": str(out), "variants": sorted(manifest.variants), "parity": parity}, indent=2))
    return 0


def cmd_release(args) -> int:
    from training.release import release

    cfg = _config(args)
    out = Path(args.out) if args.out else Path("model") / cfg.name
    report = release(
        cfg,
        _run_dir(args, cfg),
        out,
        force=args.force,
        device=args.device,
        keep_all_variants=args.keep_all_variants,
        checkpoint=Path(args.checkpoint) if args.checkpoint else None,
    )
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 0


def cmd_average(args) -> int:
    """Average the last N snapshots (step<N>.pt) or epoch checkpoints of a run into one."""
    from training.checkpoint import average_checkpoints

    cfg = _config(args)
    run_dir = _run_dir(args, cfg)
    found = sorted(run_dir.glob(f"{args.kind}*.pt"), key=lambda p: int(p.stem[len(args.kind) :]))
    if len(found) < 2:
        raise FileNotFoundError(f"{run_dir} holds {len(found)} {args.kind}<N>.pt checkpoints; averaging needs 2")
    picked = found[-args.last :]
    out = Path(args.out) if args.out else run_dir / "averaged.pt"
    average_checkpoints(picked, out)
    print(json.dumps({"averaged": [p.name for p in picked], "out": str(out)}))
    return 0


def cmd_upgrade(args) -> int:
    """Each bundle's decoders rewritten into today's form, translations unchanged (training/upgrade.py)."""
    from training.upgrade import upgrade_bundle

    for bundle in args.bundle:
        done = upgrade_bundle(Path(bundle))
        print(f"{bundle}: " + (", ".join(f"{v} (align_query.{k})" for v, k in done.items()) or "already current"))
    return 0


def cmd_vocab(args) -> int:
    """Each target language's vocabulary from the config's training targets, into the bundle
    (training/vocab.py)."""
    from service.runtime.bundle import load_manifest
    from training.vocab import add_target_vocab

    bundle = Path(args.bundle)
    manifest = add_target_vocab(bundle, _config(args), bundle / load_manifest(bundle).tokenizer)
    print(json.dumps({"bundle": str(bundle), **manifest.target_vocab}))
    return 0


def cmd_shortlist(args) -> int:
    """A lexical shortlist from parallel text into the bundle (training/shortlist.py): the
    config's training pairs, or the files given."""
    from training import shortlist

    if bool(args.config) == bool(args.source):
        raise SystemExit("shortlist: give --config, or --source and --target")
    bundle = Path(args.bundle)
    if args.config:
        rows = shortlist.config_rows(_config(args))
        source = args.config
    else:
        rows = shortlist.file_rows(Path(args.bundle), Path(args.source), Path(args.target), args.target_lang)
        source = f"{args.source} {args.target}"
    manifest = shortlist.add_shortlist(bundle, rows, args.k, args.frequent, args.max_pairs, source)
    print(json.dumps({"bundle": str(bundle), **manifest.shortlist}))
    return 0


def cmd_import(args) -> int:
    """A model made elsewhere (Argos package, CTranslate2 directory, Hugging Face Marian folder)
    into a bundle, read by our own code (training/importers)."""
    from training.importers import ImportOptions, run_import

    results = run_import(args.kind, Path(args.path), Path(args.out), ImportOptions.from_args(args))
    print(json.dumps(results, indent=2, ensure_ascii=False, default=str))
    return 2 if any("refused" in r for r in results) else 0


def cmd_models_table(args) -> int:
    """The README's model table, from the shipped manifests (so the README stays true)."""
    from service.runtime.bundle import find_bundles, load_manifest

    print("| bundle | task | data | variant | split | metric | value |")
    print("|---|---|---|---|---|---|---|")
    wanted = {"bleu", "bleu_lc_tok", "chrf", "accuracy"}
    for bundle in find_bundles(Path(args.model_dir)):
        m = load_manifest(bundle, verify=False)
        task = f"{m.source_lang}->{m.target_lang}" if m.task == "translation" else m.task
        for row in m.metrics:
            if row["name"] in wanted and row["variant"] == m.default_variant:
                shown = row.get("direction", task).replace("-", "->") if m.directions else task
                print(
                    f"| {m.name} | {shown} | {m.data.get('corpus')} | {row['variant']} | {row['split']} "
                    f"| {row['name']} | {row['value']} |"
                )
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training",
        description="transerve training job: tokenizer, training, evaluation, ONNX export, release.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="STEP")

    def with_config(sp):
        sp.add_argument("--config", required=True, help="a TOML file, e.g. training/configs/multi30k-de-en.toml")
        sp.add_argument("--run-dir", help="checkpoints, tokenizer and logs (default runs/<name>)")
        sp.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="SECTION.KEY=VALUE",
            help="override a config value (TOML syntax), repeatable",
        )
        return sp

    d = sub.add_parser("download", help="fetch a corpus from its public source, verifying sha256")
    d.add_argument("--corpus", required=True, help="multi30k, sst2 or zh-en (rebuilt from cmn.txt)")
    d.add_argument("--dest", required=True)
    d.add_argument("--force", action="store_true")
    d.set_defaults(func=cmd_download)

    data = sub.add_parser("data", help="build a parallel corpus from translation catalogs (gettext, XLIFF)")
    data_sub = data.add_subparsers(dest="format", required=True, metavar="FORMAT")
    for fmt, what in (
        ("gettext", ".po/.mo files, folders of them, or .deb packages (their locale/*/LC_MESSAGES catalogs)"),
        ("xliff", "XLIFF 1.2 or 2.x files or folders of them"),
    ):
        df = data_sub.add_parser(fmt, help=what)
        df.add_argument("inputs", nargs="+", help=what)
        df.add_argument("--out", required=True, help="corpus folder: <split>.<xx>-en.{xx,en,source}.gz")
        df.add_argument("--valid", type=int, default=0, help="pairs per language pair held out as valid")
        df.add_argument("--test", type=int, default=0, help="pairs per language pair held out as test")
        df.add_argument("--source", help="name every pair's catalog this (default: each file's domain)")
        if fmt == "gettext":
            df.add_argument("--lang", help="the catalogs' language when neither header nor path says it")
        df.set_defaults(func=cmd_data, lang=None)
    bt = data_sub.add_parser("backtranslate", help="English monolingual text -> synthetic xx-en pairs with a bundle")
    bt.add_argument("--bundle", required=True, help="a translation bundle with the en->xx direction")
    bt.add_argument("--into", required=True, help="the language to translate the English into (de, fr, cs, zh)")
    bt.add_argument("--input", required=True, nargs="+", help="English text files, one sentence a line (.gz too)")
    bt.add_argument("--out", required=True, help="corpus folder: train.<xx>-en.{xx,en,source}.gz, appended")
    bt.add_argument("--limit", type=int, default=10000, help="English lines to translate (3-80 words each)")
    bt.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: its default)")
    bt.set_defaults(func=cmd_backtranslate)

    t = with_config(sub.add_parser("tokenizer", help="train the SentencePiece model on the train split"))
    t.add_argument("--force", action="store_true", help="retrain even if the run has one")
    t.set_defaults(func=cmd_tokenizer)

    tr = with_config(sub.add_parser("train", help="train (or --resume) a model"))
    tr.add_argument("--resume", action="store_true", help="continue from <run-dir>/last.pt exactly")
    tr.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    tr.set_defaults(func=cmd_train)

    e = with_config(sub.add_parser("evaluate", help="greedy-decode a split: sacreBLEU, chrF / accuracy"))
    e.add_argument("--split", required=True, help="e.g. test_2016_flickr, val, valid")
    e.add_argument("--checkpoint", help="default <run-dir>/best.pt")
    e.add_argument("--bundle", help="evaluate an exported bundle with the service's engine instead")
    e.add_argument("--variant", help="bundle variant (fp32, int8-static, ...; default: the one it serves)")
    e.add_argument("--output", help="write the hypotheses here")
    e.set_defaults(func=cmd_evaluate)

    x = with_config(sub.add_parser("export", help="write an ONNX bundle (fp32 + int8 variants) with parity checks"))
    x.add_argument("--checkpoint", help="default <run-dir>/best.pt")
    x.add_argument("--out", help="bundle folder (default model/<name>)")
    x.add_argument("--force", action="store_true", help="overwrite an existing bundle")
    x.add_argument("--no-int8", action="store_true", help="skip the int8 variants")
    x.set_defaults(func=cmd_export)

    r = with_config(
        sub.add_parser(
            "release",
            help="the whole pipeline from a config: train, export, "
            "evaluate, choose the served variant, write the model card",
        )
    )
    r.add_argument("--out", help="bundle folder (default model/<name>)")
    r.add_argument("--force", action="store_true", help="overwrite an existing bundle")
    r.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    r.add_argument("--keep-all-variants", action="store_true", help="keep every variant's graphs")
    r.add_argument("--checkpoint", help="release this checkpoint as it is, without training")
    r.set_defaults(func=cmd_release)

    a = with_config(sub.add_parser("average", help="average a run's last N snapshots into one checkpoint"))
    a.add_argument("--last", type=int, default=5)
    a.add_argument("--kind", default="step", choices=["step", "epoch"], help="step<N>.pt snapshots or epoch<N>.pt")
    a.add_argument("--out", help="default <run-dir>/averaged.pt")
    a.set_defaults(func=cmd_average)

    u = sub.add_parser("upgrade", help="rewrite a bundle's graphs into today's form (same translations)")
    u.add_argument("--bundle", required=True, action="append", help="a bundle folder, repeatable")
    u.set_defaults(func=cmd_upgrade)

    v = with_config(sub.add_parser("vocab", help="add each target language's vocabulary to a bundle"))
    v.add_argument("--bundle", required=True, help="a translation bundle folder")
    v.set_defaults(func=cmd_vocab)

    sl = sub.add_parser(
        "shortlist", help="add a lexical shortlist (each source piece's likely target pieces) to a bundle"
    )
    sl.add_argument("--bundle", required=True, help="a translation bundle folder")
    sl.add_argument("--config", help="a TOML file: its training pairs (data.train_sets, or the corpus)")
    sl.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value")
    sl.add_argument("--source", help="parallel text instead of a config: the source side, one sentence a line")
    sl.add_argument("--target", help="the target side, line by line with --source")
    sl.add_argument("--target-lang", help="the target language of --source/--target (default: the bundle's)")
    sl.add_argument("--k", type=int, default=50, help="target pieces kept per source piece")
    sl.add_argument("--frequent", type=int, default=1000, help="most frequent target pieces every sentence gets")
    sl.add_argument("--max-pairs", type=int, default=300_000, help="sentence pairs used per direction (sampled)")
    sl.set_defaults(func=cmd_shortlist)

    im = sub.add_parser("import", help="import an Argos package, a CTranslate2 model or a Marian folder as a bundle")
    im.add_argument("kind", choices=["argos", "ct2", "marian"])
    im.add_argument(
        "path",
        help="argos: a package folder, a .argosmodel file or a folder of packages; ct2: a CTranslate2 model "
        "directory; marian: a Hugging Face Marian folder",
    )
    im.add_argument("--out", required=True, help="bundle folder (argos with several packages: their parent folder)")
    im.add_argument("--source-spm", help="ct2: the source SentencePiece model (marian: instead of source.spm)")
    im.add_argument("--target-spm", help="ct2: the target SentencePiece model when it is not the source's")
    im.add_argument("--source-lang", help="source language code (argos: from the package)")
    im.add_argument("--target-lang", help="target language code (argos: from the package)")
    im.add_argument("--license", help="the model's license, for the card (argos: from the package)")
    im.add_argument("--valid-source", help="a small validation text, one sentence a line: picks the served variant")
    im.add_argument("--valid-target", help="its reference translations (default: fp32's own outputs)")
    im.add_argument("--max-len", type=int, default=512, help="positions the bundle serves (cut to the model's)")
    im.add_argument("--check", action="store_true", help="compare greedy outputs with ctranslate2 / transformers")
    im.add_argument("--force", action="store_true", help="overwrite an existing bundle")
    im.add_argument("--no-int8", action="store_true", help="skip the int8 variants")
    im.add_argument("--keep-all-variants", action="store_true", help="keep every variant's graphs")
    im.add_argument(
        "--no-weights",
        action="store_true",
        help="skip the PyTorch weights (weights.pt) that train.init_from fine-tunes",
    )
    im.set_defaults(func=cmd_import)

    mt = sub.add_parser("models-table", help="print the README's model table from model/*/manifest.json")
    mt.add_argument("--model-dir", default="model")
    mt.set_defaults(func=cmd_models_table)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        log.error("%s", e)
        return 2


if __name__ == "__main__":
    sys.exit(main())
