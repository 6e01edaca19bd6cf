"""The release pipeline: tokenizer -> train -> export -> evaluate the served engine -> choose the
variant -> model card. One config in, one verified bundle out."""

from __future__ import annotations

import json
import logging
import platform
import random
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.runtime.bundle import Manifest, load_manifest, sha256_file, write_manifest
from service.runtime.classifier import Classifier
from service.runtime.sessions import resolve_providers
from service.runtime.translator import Translator
from training.checkpoint import WEIGHTS_FILE, export_weights, load_checkpoint, model_from_checkpoint
from training.config import RunConfig
from training.devices import cpuinfo
from training.evaluate import classification_metrics, format_confusion
from training.export import export_bundle
from training.tasks import TOKENIZER_FILE, make_task, run_tokenizer, split_names
from training.tokenizer import CodecTokenizer
from training.train import train
from training.vocab import add_target_vocab, keep_variant_vocab

log = logging.getLogger(__name__)

VARIANT_TOLERANCE = 0.5  # BLEU or accuracy points a faster variant may lose against fp32
CALIBRATION_TEXTS = 512  # training sentences that calibrate the int8-static variant
INVARIANCE_SENTENCES = 64  # sentences run alone and in their batch to test batch invariance


def calibration_texts(cfg: RunConfig) -> list[str]:
    """The training sentences whose activations calibrate the int8-static variant (a seeded
    sample): training text, because the variants are then judged on the validation split."""
    rows = make_task(cfg, tokenizer=None).raw(split_names(cfg)[0])  # type: ignore[arg-type]
    picked = random.Random(cfg.train.seed).sample(rows, min(CALIBRATION_TEXTS, len(rows)))
    return [r[0] for r in picked]


def command_line() -> str:
    return "python -m training " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def evaluate_bundle(
    bundle_dir: Path,
    cfg: RunConfig,
    split: str,
    variant: str | None = None,
    batch_sentences: int = 32,
    invariance: bool = False,
) -> dict[str, Any]:
    """Score the bundle's `variant` (default: the one it serves) on `split` with the service's own
    engine; also time it. With `invariance`, also run the first INVARIANCE_SENTENCES examples one
    at a time and report the share whose result equals the batched one (`batch_invariant`, 1.0 =
    all)."""
    manifest = load_manifest(bundle_dir)
    variant = variant or manifest.default_variant
    task = make_task(cfg, tokenizer=None)  # type: ignore[arg-type]
    rows = task.raw(split)
    providers = resolve_providers("cpu")
    t0 = time.perf_counter()
    if cfg.task == "translation":
        engine = Translator(bundle_dir, manifest, providers, threads=2, variant=variant)
        sources = [r[0] for r in rows]
        order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
        hyps = [""] * len(sources)
        for start in range(0, len(order), batch_sentences):
            chunk = order[start : start + batch_sentences]
            for i, h in zip(chunk, engine.translate([sources[i] for i in chunk])):
                hyps[i] = h
        seconds = time.perf_counter() - t0
        metrics = task.metrics(split, hyps, [r[1] for r in rows])
        metrics["examples"] = [
            {"source": s, "hypothesis": h, "reference": r[1]} for s, h, r in list(zip(sources, hyps, rows))[:5]
        ]
        if invariance:
            alone = [engine.translate([s])[0] for s in sources[:INVARIANCE_SENTENCES]]
            same = sum(a == h for a, h in zip(alone, hyps))
            metrics["batch_invariant"] = round(same / len(alone), 4)
    else:
        engine = Classifier(bundle_dir, manifest, providers, threads=2, variant=variant)
        texts = [r[0] for r in rows]
        probs = np.concatenate([engine.predict(texts[start : start + 64]) for start in range(0, len(texts), 64)])
        seconds = time.perf_counter() - t0
        metrics = classification_metrics(probs.argmax(1).tolist(), [r[1] for r in rows], cfg.data.labels)
        if invariance:
            alone = np.concatenate([engine.predict([t]) for t in texts[:INVARIANCE_SENTENCES]])
            same = np.abs(alone - probs[: len(alone)]).max(axis=1) <= 1e-5
            metrics["batch_invariant"] = round(float(same.mean()), 4)
    metrics.update(
        {
            "split": split,
            "variant": variant,
            "sentences": len(rows),
            "seconds": round(seconds, 2),
            "sentences_per_s": round(len(rows) / seconds, 1),
        }
    )
    return metrics


def choose_variant(valid: dict[str, dict[str, Any]], metric: str) -> str:
    """The fastest batch-invariant variant whose validation metric is within VARIANT_TOLERANCE
    of fp32's. Batch invariance is required because a service batches concurrent requests:
    a variant whose answer to one client depends on other clients' texts is not reproducible
    (and lets one client's input reach another's output)."""
    base = valid["fp32"][metric]
    ok = [
        v
        for v, m in valid.items()
        if v == "fp32" or (m[metric] >= base - VARIANT_TOLERANCE and m.get("batch_invariant", 0.0) == 1.0)
    ]
    return max(ok, key=lambda v: valid[v]["sentences_per_s"])


def keep_only_variant(bundle_dir: Path, variant: str) -> None:
    """Delete the other variants' graphs and rewrite the manifest (metrics are kept)."""
    manifest = load_manifest(bundle_dir)
    served = {g.file for g in manifest.variants[variant].values()}
    for graphs in manifest.variants.values():
        for g in graphs.values():
            if g.file not in served:
                (bundle_dir / g.file).unlink(missing_ok=True)
    files = {n: s for n, s in manifest.files.items() if (bundle_dir / n).exists()}
    vocab = manifest.target_vocab
    if vocab:  # the other variants' projections leave the target vocabularies' file too
        vocab = keep_variant_vocab(bundle_dir, vocab, variant)
        files[vocab["file"]] = sha256_file(bundle_dir / vocab["file"])
    write_manifest(
        bundle_dir,
        replace(
            manifest,
            variants={variant: manifest.variants[variant]},
            default_variant=variant,
            files=files,
            target_vocab=vocab,
        ),
    )


def release(
    cfg: RunConfig,
    run_dir: Path,
    out_dir: Path,
    force: bool = False,
    device: str = "auto",
    keep_all_variants: bool = False,
    checkpoint: Path | None = None,
) -> dict[str, Any]:
    """Train (or resume) `cfg` in `run_dir`, then export, evaluate and document the bundle in
    `out_dir`. With `checkpoint`, release that checkpoint as it is, without training (e.g. an
    average of snapshots: `python -m training average`)."""
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise FileExistsError(f"{out_dir} exists; pass --force to overwrite it")
    earlier = prior_stages(cfg)  # before the export: init_from may name the bundle being replaced
    metric = "bleu" if cfg.task == "translation" else "accuracy"
    if checkpoint is None:
        summary = train(cfg, run_dir, resume=(run_dir / "last.pt").exists(), device=device)
        if summary.get("interrupted"):
            raise InterruptedError(f"training of {cfg.name} was interrupted; run the same command again to resume")
        best, averaged = summary[f"best_valid_{metric}"], summary.get(f"averaged_valid_{metric}")
        ckpt = run_dir / ("averaged.pt" if averaged is not None and averaged > best else "best.pt")
        log.info("release %s from %s (valid %s: best %s, averaged %s)", cfg.name, ckpt.name, metric, best, averaged)
    else:
        ckpt = checkpoint
        summary = checkpoint_summary(ckpt, run_dir / "last.pt")
        log.info("release %s from the given checkpoint %s, without training", cfg.name, ckpt)
    model = model_from_checkpoint(ckpt)
    tokenizer = run_tokenizer(run_dir)
    # a fine-tuned imported model: exported with its own codec (training/tasks.py, prepare_imported)
    imported = tokenizer if isinstance(tokenizer, CodecTokenizer) else None
    task = make_task(cfg, tokenizer)
    valid_split = split_names(cfg)[1]
    parity_texts = [r[0] for r in task.raw(valid_split)[:50]]
    extra = [p for p in (run_dir / "curves.png",) if p.exists()] + (imported.export_files() if imported else [])
    manifest, parity = export_bundle(
        model,
        cfg,
        run_dir / TOKENIZER_FILE,
        out_dir,
        parity_texts,
        force=force,
        extra_files=extra,
        training_info={"checkpoint": ckpt.name, **summary, "hardware": hardware(trained_threads(ckpt))},
        calibration_texts=calibration_texts(cfg),
        codec=imported.spec if imported else None,
    )
    if cfg.task == "translation" and not imported:  # before the evaluation: the served engine decodes with them
        manifest = add_target_vocab(out_dir, cfg, run_dir / TOKENIZER_FILE)
    valid = {v: evaluate_bundle(out_dir, cfg, valid_split, v, invariance=True) for v in manifest.variants}
    served = choose_variant(valid, metric)
    tests = list(cfg.data.test_splits)
    results = [valid[v] for v in valid]
    # Every variant on every split; a multilingual model's many sets: fp32 and the served one.
    scored = [v for v in manifest.variants if not cfg.data.directions or v in ("fp32", served)]
    for split in tests:
        results += [evaluate_bundle(out_dir, cfg, split, v) for v in scored]
    cmd = command_line()
    metrics = []
    for r in results:
        names = ("bleu", "chrf", "bleu_lc_tok") if cfg.task == "translation" else ("accuracy", "macro_f1")
        scopes = [(d, m) for d, m in r["per_direction"].items()] if "per_direction" in r else [("", r)]
        for direction, scores in scopes:
            for name in names:
                if name in scores:
                    sig = scores.get(f"{name}_signature") or scores.get(f"{name}_method", "")
                    row = {"name": name, "split": r["split"], "variant": r["variant"], "value": scores[name]}
                    metrics.append(
                        {**row, **({"direction": direction} if direction else {}), "signature": sig, "command": cmd}
                    )
        metrics.append(
            {
                "name": "sentences_per_s",
                "split": r["split"],
                "variant": r["variant"],
                "value": r["sentences_per_s"],
                "command": cmd,
            }
        )
    if not keep_all_variants:
        keep_only_variant(out_dir, served)
    if cfg.task == "translation":  # not served (not in the manifest's files, not in the image)
        export_weights(ckpt, out_dir / WEIGHTS_FILE)
    manifest = load_manifest(out_dir)
    stage = stage_record(manifest.training, run_dir)  # the export wrote cfg into it
    manifest = replace(
        manifest,
        metrics=metrics,
        training={
            **manifest.training,
            "stages": [s for s in earlier if s.get("run") != stage["run"]] + [stage],
            "parity": parity,
            "served_variant_reason": (
                f"fastest batch-invariant variant within {VARIANT_TOLERANCE} {metric} of fp32 on {valid_split}"
            ),
            "batch_invariant": {v: valid[v].get("batch_invariant") for v in valid},
        },
    )
    confusion = next((r for r in results if "confusion_matrix" in r and r["variant"] == served), None)
    if confusion:
        plot_confusion(confusion, out_dir / "confusion.png")
    card = model_card(manifest, results, parity, cfg, curves=(out_dir / "curves.png").exists())
    (out_dir / "README.md").write_text(card, encoding="utf-8")
    added = [p for p in (out_dir / "README.md", out_dir / "confusion.png") if p.exists()]
    manifest = replace(manifest, files={**manifest.files, **{p.name: sha256_file(p) for p in added}})
    write_manifest(out_dir, manifest)
    report = {
        "bundle": str(out_dir),
        "served_variant": served,
        "summary": summary,
        "parity": parity,
        "results": [{k: v for k, v in r.items() if k != "examples"} for r in results],
    }
    (run_dir / "release.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    return report


def plot_confusion(result: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm, labels = result["confusion_matrix"], result["labels"]
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2, 1.0 * len(labels) + 1.5))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(f"{result['split']} ({result['variant']}): accuracy {result['accuracy']}%")
    top = max(max(row) for row in cm) or 1
    for i, row in enumerate(cm):
        for j, v in enumerate(row):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > top / 2 else "black")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def checkpoint_summary(ckpt: Path, last: Path) -> dict[str, Any]:
    """What a release from a given checkpoint says of its training: the run's state in `last`
    (steps, epochs, time, validation history), and the checkpoint's own averaging."""
    state = load_checkpoint(last)["state"] if last.exists() else {}
    own = load_checkpoint(ckpt)
    history = state.get("history", [])
    return {
        "steps": state.get("step"),
        "epochs": state.get("epoch"),
        "train_seconds": round(state.get("train_seconds", 0.0), 1),
        "valid_history": history,
        "averaged_from": own.get("averaged_from", []),
    }


def prior_stages(cfg: RunConfig) -> list[dict[str, Any]]:
    """The training stages behind `train.init_from`: the stages recorded in the manifest of the
    bundle those weights belong to (one stage built from its training record when it has none);
    nothing for a run from random weights. The model card sums them: a fine-tuned model's card
    tells the whole history, not only its last stage."""
    if not cfg.train.init_from:
        return []
    path = Path(cfg.train.init_from).parent / "manifest.json"
    if not path.exists():
        return [{"config": "", "init": cfg.train.init_from, "note": "weights from outside a bundle: history unknown"}]
    training = json.loads(path.read_text(encoding="utf-8")).get("training", {})
    if training.get("stages"):
        return list(training["stages"])
    return [stage_record(training)]


def stage_record(training: dict[str, Any], run_dir: Path | None = None) -> dict[str, Any]:
    """One stage of a model's training, from a manifest's training record (its run config, steps,
    time, hardware), and the run folder it came from (a second release from the same run
    replaces its stage, never adds one)."""
    config = training.get("config", {})
    data = config.get("data", {})
    return {
        "config": config.get("source", ""),
        "run": str(run_dir.resolve()) if run_dir else training.get("run", ""),
        "init_from": config.get("train", {}).get("init_from", ""),
        "train_sets": list(data.get("train_sets", [])) or [f"{data.get('dir', '')} ({data.get('corpus', '')})"],
        "steps": training.get("steps"),
        "train_seconds": training.get("train_seconds", 0.0),
        "hardware": training.get("hardware", ""),
        "checkpoint": training.get("checkpoint", ""),
    }


def history_lines(stages: list[dict[str, Any]]) -> list[str]:
    """The card's training history: one row per stage, then the totals."""
    if not stages:
        return []
    lines = [
        "| stage | config | started from | steps | hours | hardware | released checkpoint |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, st in enumerate(stages, 1):
        hours = (st.get("train_seconds") or 0.0) / 3600
        start = f"`{st['init_from']}`" if st.get("init_from") else "random weights"
        lines.append(
            f"| {i} | `{st.get('config') or '?'}` | {start} | {st.get('steps') or '?'} | {hours:.2f} "
            f"| {st.get('hardware') or '?'} | `{st.get('checkpoint') or '?'}` |"
        )
    steps = sum(st.get("steps") or 0 for st in stages)
    hours = sum(st.get("train_seconds") or 0.0 for st in stages) / 3600
    lines += ["", f"In all: {len(stages)} stages, {steps:,} steps, {hours:.1f} hours of training."]
    sets = [s for s in stages[-1].get("train_sets", [])]
    if sets:
        lines += ["", "Data of the last stage (`pair folder split [options]`):", ""]
        lines += [f"- `{s}`" for s in sets]
    return lines


def trained_threads(ckpt: Path) -> int:
    return int(load_checkpoint(ckpt)["run_config"]["train"].get("threads", 0))


def hardware(threads: int = 0) -> str:
    """Where the run trained: the GPU, or the CPU and the threads training used (the run's own
    `train.threads` setting, as stored in its checkpoint, else torch's default)."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    names = [line.split(":", 1)[1].strip() for line in cpuinfo().splitlines() if line.startswith("model name")]
    name = names[0] if names else platform.machine()
    n = threads or torch.get_num_threads()
    return f"CPU ({name}), {n} thread{'s' if n > 1 else ''}"


def vocab_line(manifest: Manifest) -> str:
    """The card's line on the target vocabularies (training/vocab.py)."""
    spec = manifest.target_vocab
    return (
        f"- Target vocabularies ({', '.join(spec['languages'])}): each sentence is decoded with the output projection "
        "cut to the pieces its target language's training targets contain (`target_vocab.npz`, "
        f"variants {', '.join(sorted(spec['projection'])) or 'none'}; docs/architecture.md)."
    )


def model_card(
    manifest, results: list[dict[str, Any]], parity: dict[str, Any], cfg: RunConfig, curves: bool = True
) -> str:
    m, t = manifest.model, manifest.training
    lines = [f"# {manifest.name} ({manifest.task}, v{manifest.version})", ""]
    if manifest.task == "translation" and manifest.directions:
        lines.append(
            f"Translates **{', '.join(manifest.directions)}** with greedy decoding: one multilingual model, "
            "the target language chosen by a tag `<2xx>` before the source."
        )
    elif manifest.task == "translation":
        lines.append(f"Translates **{manifest.source_lang} -> {manifest.target_lang}** with greedy decoding.")
    else:
        lines.append(f"Classifies text into: {', '.join(manifest.labels)}.")
    lines += [
        "",
        "## Data and license",
        "",
        f"- Corpus: `{manifest.data.get('corpus')}` ({manifest.data.get('source') or 'see training config'})",
        f"- License: {manifest.data.get('license')}",
        "",
        "## Architecture",
        "",
        f"- Transformer, d_model {m['d_model']}, {m['n_heads']} heads, FFN {m['d_ff']}, "
        f"{m['n_encoder_layers']} encoder / {m['n_decoder_layers']} decoder layers, "
        f"{'pre' if m['pre_norm'] else 'post'}-LayerNorm, vocabulary {manifest.vocab_size} "
        f"(SentencePiece {cfg.tokenizer.model_type}), {m['parameters']:,} parameters.",
        f"- Served variant: `{manifest.default_variant}` ({t.get('served_variant_reason', '')}).",
        *([vocab_line(manifest)] if manifest.target_vocab else []),
        "",
        *(["## Limits", "", cfg.data.limits, ""] if cfg.data.limits else []),
        "## Training",
        "",
        f"- This stage: {t.get('epochs')} epochs, {t.get('steps')} steps, {t.get('train_seconds', 0) / 60:.1f} min "
        f"on {t.get('hardware')}; checkpoint `{t.get('checkpoint')}`.",
        f"- PyTorch/onnxruntime parity (fp32): {parity}",
        "",
        *history_lines(t.get("stages", [])),
        *([""] if t.get("stages") else []),
        "## Metrics",
        "",
        "| split | variant | metric | value |",
        "|---|---|---|---|",
    ]
    for r in results:
        for name in ("bleu", "bleu_lc_tok", "chrf", "accuracy", "macro_f1", "sentences_per_s", "batch_invariant"):
            if name in r:
                label = "bleu (mean of directions)" if name == "bleu" and "per_direction" in r else name
                lines.append(f"| {r['split']} | {r['variant']} | {label} | {r[name]} |")
    directed = [r for r in results if "per_direction" in r]
    if directed:
        lines += [
            "",
            "Per direction (sacreBLEU cased detokenized / chrF):",
            "",
            "| split | variant | direction | sentences | BLEU | chrF |",
            "|---|---|---|---|---|---|",
        ]
        counts = {r["split"]: r.get("direction_sentences", {}) for r in directed}
        for r in directed:
            for d, m in r["per_direction"].items():
                n = counts[r["split"]].get(d, "")
                lines.append(f"| {r['split']} | {r['variant']} | {d} | {n} | {m['bleu']} | {m['chrf']} |")
    sigs = {r.get("bleu_signature") for r in results if r.get("bleu_signature")}
    sigs |= {m.get("bleu_signature") for r in directed for m in r["per_direction"].values()}
    sigs.discard(None)
    if sigs:
        lines += ["", "sacreBLEU signatures: " + "; ".join(f"`{s}`" for s in sorted(sigs))]
    labelled = [r for r in results if r.get("per_label_accuracy")]
    if labelled:
        labels = list(labelled[0]["per_label_accuracy"])
        lines += [
            "",
            "Accuracy per label (%):",
            "",
            "| split | variant | " + " | ".join(labels) + " |",
            "|---|---|" + "---|" * len(labels),
        ]
        for r in labelled:
            lines.append(
                f"| {r['split']} | {r['variant']} | "
                + " | ".join(str(r["per_label_accuracy"][k]) for k in labels)
                + " |"
            )
    for r in results:
        if "confusion_matrix" in r:
            lines += [
                "",
                f"Confusion matrix ({r['split']}, {r['variant']}):",
                "",
                "```",
                format_confusion(r["confusion_matrix"], r["labels"]),
                "```",
            ]
            break
    lines += ["", f"Command: `{command_line()}`", ""]
    if curves:  # a release of a given checkpoint from a run without an epoch's log has none
        lines += ["![training curves](curves.png)", ""]
    if manifest.task == "classification":
        lines += ["![confusion matrix of the served variant](confusion.png)", ""]
    return "\n".join(lines)
