"""One training loop for both tasks: translation (Seq2SeqTransformer) and classification.

A task object knows how to load, batch and score its data; the loop knows optimisation,
checkpoints, resumption, validation, early stopping, logging and distribution. Runs on CPU or
CUDA, and under ``torchrun`` (DistributedDataParallel, one process per device) unchanged.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import random
import shutil
import signal
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from service.runtime.bundle import target_tag
from training.config import RESUMABLE_CHANGES, RunConfig, config_changes
from training.data import (
    load_directions,
    load_langid,
    load_parallel,
    load_tsv,
    short_spans,
    token_batches,
)
from training.evaluate import (
    classification_metrics,
    classify,
    encode_classifier_input,
    pad_batch,
    translate,
    translation_metrics,
)
from training.tokenizer import Tokenizer, train_tokenizer
from training.transformer import TransformerConfig, build_model, count_parameters

log = logging.getLogger(__name__)

TOKENIZER_FILE = "spm.model"


# ----------------------------------------------------------------------------- tasks


class TranslationTask:
    """Parallel text -> (source ids + </s>, <s> + target ids, target ids + </s>)."""

    metric = "bleu"
    unit, rate_label = "tokens", "tok_s"  # what the loss counts: target tokens

    def __init__(self, cfg: RunConfig, tokenizer: Tokenizer) -> None:
        self.cfg, self.tok = cfg, tokenizer
        self.data_dir = Path(cfg.data.dir)
        self.row_directions: dict[str, list[str]] = {}  # multilingual: each raw row's direction

    def raw(self, split: str) -> list[tuple[str, str]]:
        d = self.cfg.data
        if d.directions:  # multilingual: the sets of the config, every direction, tagged
            rows = load_directions(self.sets(split), d.directions, d.target_tags)
            self.row_directions[split] = [r[2] for r in rows]
            return [(r[0], r[1]) for r in rows]
        return load_parallel(self.data_dir, split, d.source_lang, d.target_lang)

    def encode(
        self, pairs: list[tuple[str, str]], filter_long: bool, sample_alpha: float = 0.0
    ) -> list[tuple[list, list]]:
        d = self.cfg.data
        srcs = self.tok.encode_batch([p[0] for p in pairs], sample_alpha)
        tgts = self.tok.encode_batch([p[1] for p in pairs], sample_alpha)
        eos, limit = self.tok.sp.eos_id(), d.max_tokens_per_sentence
        out = []
        for s, t in zip(srcs, tgts):
            if filter_long and (
                not s
                or not t
                or len(s) >= limit
                or len(t) >= limit
                or max(len(s), len(t)) > d.max_length_ratio * min(len(s), len(t)) + 5
            ):
                continue
            out.append((s[: limit - 1] + [eos], t[: limit - 1]))
        return out

    def sets(self, split: str) -> tuple[str, ...]:
        """A multilingual config's parallel sets for `split`: train, valid, or a named eval set."""
        d = self.cfg.data
        if split == d.train_split:
            return d.train_sets
        if split == d.valid_split:
            return d.valid_sets
        named = tuple(line.split(None, 1)[1] for line in d.eval_sets if line.split(None, 1)[0] == split)
        if not named:
            known = sorted({line.split(None, 1)[0] for line in d.eval_sets})
            raise ValueError(f"no set named {split!r}: splits are {d.train_split}, {d.valid_split}, {known}")
        return named

    def by_direction(self, split: str, hyps: list[str], refs: list[str]) -> dict[str, dict[str, Any]]:
        """Metrics of each direction of a multilingual split (rows as `raw(split)` gave them)."""
        per: dict[str, tuple[list[str], list[str]]] = {}
        for hyp, ref, direction in zip(hyps, refs, self.row_directions[split]):
            per.setdefault(direction, ([], []))[0].append(hyp)
            per[direction][1].append(ref)
        return {k: translation_metrics(h, r, k.split("-")[1]) for k, (h, r) in sorted(per.items())}

    @staticmethod
    def length(example: tuple[list, list]) -> int:
        return len(example[0]) + len(example[1]) + 1

    def collate(self, examples: list, device: torch.device) -> dict[str, Tensor]:
        pad, bos, eos = self.tok.sp.pad_id(), self.tok.sp.bos_id(), self.tok.sp.eos_id()
        src = pad_batch([e[0] for e in examples], pad)
        tgt_in = pad_batch([[bos] + e[1] for e in examples], pad)
        tgt_out = pad_batch([e[1] + [eos] for e in examples], pad)
        return {"src": src.to(device), "tgt_in": tgt_in.to(device), "tgt_out": tgt_out.to(device)}

    def loss(self, model: nn.Module, batch: dict[str, Tensor], smoothing: float) -> tuple[Tensor, int]:
        logits = model(batch["src"], batch["tgt_in"])
        n_tokens = int((batch["tgt_out"] != self.tok.sp.pad_id()).sum())
        loss = F.cross_entropy(
            logits.float().flatten(0, 1),
            batch["tgt_out"].flatten(),
            ignore_index=self.tok.sp.pad_id(),
            label_smoothing=smoothing,
            reduction="sum",
        )
        return loss, n_tokens

    def validate(self, model: nn.Module, raw: list, device: torch.device) -> dict[str, Any]:
        limit = self.cfg.train.valid_bleu_sentences or len(raw)
        hyps = translate(model, self.tok, [p[0] for p in raw[:limit]], device=device)
        if not self.cfg.data.directions:
            return translation_metrics(hyps, [p[1] for p in raw[:limit]], self.cfg.data.target_lang)
        # Multilingual: BLEU per direction; the model is selected on their mean.
        per = self.by_direction(self.cfg.data.valid_split, hyps, [p[1] for p in raw[:limit]])
        scores = {k: m["bleu"] for k, m in per.items()}
        log.info("valid BLEU per direction: %s", scores)
        return {"bleu": round(sum(scores.values()) / len(scores), 2), "per_direction": scores}


class ClassificationTask:
    """Labelled text -> (<s> + ids, label). Data from TSV files, or per-language text (langid)."""

    metric = "accuracy"
    unit, rate_label = "examples", "ex_s"

    def __init__(self, cfg: RunConfig, tokenizer: Tokenizer) -> None:
        self.cfg, self.tok = cfg, tokenizer

    def raw(self, split: str) -> list[tuple[str, int]]:
        """Rows of a split. ``valid_short`` is the validation split cut to 1-3 word spans."""
        d, seed = self.cfg.data, self.cfg.train.seed
        if split == "valid_short":
            return short_spans(self.raw("valid"), seed)
        if d.langid_sources:
            rows = load_langid(d.langid_sources, d.labels, split)
            if split != "train" and d.langid_valid_per_label:
                rows = _balanced_sample(rows, d.langid_valid_per_label, seed=seed)
        else:
            name = {"train": d.train_file, "valid": d.valid_file}.get(split, split)
            rows = load_tsv(Path(d.dir) / name, d.labels, d.label_aliases)
        if split == "train" and d.short_span_fraction:
            rng = random.Random(seed)
            rows = rows + short_spans(rng.sample(rows, int(len(rows) * d.short_span_fraction)), seed)
        return rows

    def encode(
        self, rows: list[tuple[str, int]], filter_long: bool, sample_alpha: float = 0.0
    ) -> list[tuple[list, int]]:
        limit = self.cfg.data.max_tokens_per_sentence
        return [(encode_classifier_input(self.tok, t, limit, sample_alpha), y) for t, y in rows if t]

    @staticmethod
    def length(example: tuple[list, int]) -> int:
        return len(example[0])

    def collate(self, examples: list, device: torch.device) -> dict[str, Tensor]:
        ids = pad_batch([e[0] for e in examples], self.tok.sp.pad_id())
        labels = torch.tensor([e[1] for e in examples], dtype=torch.long)
        return {"ids": ids.to(device), "labels": labels.to(device)}

    def loss(self, model: nn.Module, batch: dict[str, Tensor], smoothing: float) -> tuple[Tensor, int]:
        logits = model(batch["ids"])
        loss = F.cross_entropy(logits.float(), batch["labels"], label_smoothing=smoothing, reduction="sum")
        return loss, batch["labels"].numel()

    def validate(self, model: nn.Module, raw: list, device: torch.device) -> dict[str, Any]:
        probs = classify(model, self.tok, [r[0] for r in raw], device=device)
        return classification_metrics(probs.argmax(1).tolist(), [r[1] for r in raw], self.cfg.data.labels)


class MaskedLMTask(ClassificationTask):
    """Masked-language-model pretraining of a classifier's encoder on its training texts, labels
    unused (BERT's recipe; pretraining on the task's own data already helps a from-scratch
    model: Krishna et al. 2022, "Downstream datasets make surprisingly good pretraining
    corpora"). `pretrain_mask` of the tokens are chosen; of those 80% become the mask token,
    10% a random token, 10% stay; the encoder predicts them through the tied embedding.
    </s> serves as the mask token: a classifier input never contains it."""

    metric = "mlm_accuracy"
    unit, rate_label = "tokens", "tok_s"

    def collate(self, examples: list, device: torch.device, generator: torch.Generator | None = None) -> dict:
        sp = self.tok.sp
        ids = pad_batch([e[0] for e in examples], sp.pad_id())
        chance = torch.full(ids.shape, self.cfg.train.pretrain_mask)
        chance[(ids == sp.pad_id()) | (ids == sp.bos_id())] = 0.0
        chosen = torch.bernoulli(chance, generator=generator).bool()
        roll = torch.rand(ids.shape, generator=generator)
        inputs = ids.masked_fill(chosen & (roll < 0.8), sp.eos_id())
        swap = chosen & (roll >= 0.8) & (roll < 0.9)
        inputs[swap] = torch.randint(4, self.tok.vocab_size, (int(swap.sum()),), generator=generator)
        return {"ids": inputs.to(device), "targets": ids.masked_fill(~chosen, -100).to(device)}

    @staticmethod
    def _logits(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        where = batch["targets"] != -100
        return model(batch["ids"], lm_positions=where), batch["targets"][where]

    def loss(self, model: nn.Module, batch: dict[str, Tensor], smoothing: float) -> tuple[Tensor, int]:
        logits, targets = self._logits(model, batch)
        loss = F.cross_entropy(logits.float(), targets, label_smoothing=smoothing, reduction="sum")
        return loss, targets.numel()

    def validate(self, model: nn.Module, raw: list, device: torch.device) -> dict[str, Any]:
        """Accuracy on masked tokens of the validation texts, the same masks every epoch."""
        data = self.encode(raw, filter_long=False)
        generator = torch.Generator().manual_seed(self.cfg.train.seed)
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for b in token_batches([len(e[0]) for e in data], 16000, 0, 0, shuffle=False):
                logits, targets = self._logits(model, self.collate([data[i] for i in b], device, generator))
                correct += int((logits.argmax(-1) == targets).sum())
                total += targets.numel()
        return {self.metric: round(100.0 * correct / max(total, 1), 2)}


def pretrain_config(cfg: RunConfig) -> RunConfig:
    """The masked-LM phase of a classification config: same data, tokenizer and model shape."""
    tc = cfg.train
    train_cfg = replace(
        tc,
        epochs=tc.pretrain_epochs,
        lr=tc.pretrain_lr or tc.lr,
        pretrain_epochs=0,
        patience=0,
        average_last=0,
        label_smoothing=0.0,
    )
    return replace(cfg, task="pretrain", model={**cfg.model, "dropout": tc.pretrain_dropout}, train=train_cfg)


def _balanced_sample(rows: list, per_label: int, seed: int) -> list:
    rng = random.Random(seed)
    by_label: dict[int, list] = {}
    for r in rows:
        by_label.setdefault(r[1], []).append(r)
    out = []
    for label in sorted(by_label):
        group = by_label[label]
        out += rng.sample(group, min(per_label, len(group)))
    return out


def make_task(cfg: RunConfig, tokenizer: Tokenizer):
    tasks = {"translation": TranslationTask, "classification": ClassificationTask, "pretrain": MaskedLMTask}
    return tasks[cfg.task](cfg, tokenizer)


def split_names(cfg: RunConfig) -> tuple[str, str]:
    """(train, validation) split names: from the config for translation, fixed for TSVs."""
    if cfg.task == "translation":
        return cfg.data.train_split, cfg.data.valid_split
    return "train", "valid"


def tokenizer_texts(cfg: RunConfig) -> list[str]:
    """The training texts the tokenizer is learned from (train split only, both sides)."""
    if cfg.task == "translation" and cfg.data.directions:
        d = cfg.data
        once = [" ".join(f for f in spec.split() if not f.startswith("repeat=")) for spec in d.train_sets]
        rows = load_directions(once, d.directions, tags=False)
        return list(dict.fromkeys(t for r in rows for t in r[:2]))  # each text once
    if cfg.task == "translation":
        d = cfg.data
        pairs = load_parallel(Path(d.dir), d.train_split, d.source_lang, d.target_lang)
        return [s for p in pairs for s in p]
    dummy = make_task(cfg, tokenizer=None)  # type: ignore[arg-type]
    return [t for t, _ in dummy.raw("train")]


def prepare_tokenizer(cfg: RunConfig, run_dir: Path, force: bool = False) -> Tokenizer:
    path = run_dir / TOKENIZER_FILE
    if force or not path.exists():
        t = cfg.tokenizer
        tags = [target_tag(d.split("-")[1]) for d in cfg.data.directions] if cfg.data.target_tags else []
        train_tokenizer(
            tokenizer_texts(cfg),
            path,
            t.vocab_size,
            t.model_type,
            t.character_coverage,
            user_defined_symbols=list(dict.fromkeys(tags)),
        )
        log.info("trained tokenizer %s (%d pieces)", path, Tokenizer(path).vocab_size)
    return Tokenizer(path)


# ----------------------------------------------------------------------------- model + checkpoints


def model_config(cfg: RunConfig, tokenizer: Tokenizer) -> TransformerConfig:
    n_classes = len(cfg.data.labels) if cfg.task != "translation" else 0
    extra = {"n_decoder_layers": 0} if n_classes else {}
    return TransformerConfig.from_dict(
        {**extra, **cfg.model, "vocab_size": tokenizer.vocab_size, "n_classes": n_classes}
    )


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    # weights_only: a checkpoint is data, never code (no pickle of arbitrary objects).
    return torch.load(path, map_location=map_location, weights_only=True)


def model_from_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> nn.Module:
    ckpt = load_checkpoint(path, map_location)
    model = build_model(TransformerConfig.from_dict(ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    return model.eval()


def _save(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)  # atomic: an interrupted save never leaves a broken checkpoint


def average_checkpoints(paths: list[Path], out: Path) -> Path:
    """Average the parameters of several checkpoints of one model (Vaswani et al. 2017, 6.1)."""
    ckpts = [load_checkpoint(p) for p in paths]
    avg = {}
    for key, value in ckpts[0]["model"].items():
        if value.is_floating_point():
            avg[key] = sum(c["model"][key] for c in ckpts) / len(ckpts)
        else:
            avg[key] = value
    _save({**ckpts[-1], "model": avg, "averaged_from": [p.name for p in paths]}, out)
    return out


# ----------------------------------------------------------------------------- distribution


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():  # already is in a classifier's pretraining phase
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    d = Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if device == "cuda":
        torch.cuda.set_device(d.local_rank)
    return d


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r} must be auto, cpu or cuda")
    return device


# ----------------------------------------------------------------------------- the loop


def cpuinfo() -> str:
    """/proc/cpuinfo, or "" where there is none (not Linux)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_has_bf16() -> bool:
    """Native bf16 matrix units (AVX512-BF16 or AMX). There, bf16 autocast trained our
    d=256 Transformer 2.2x faster than fp32; elsewhere it is emulated and slower."""
    flags = cpuinfo()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def inverse_sqrt_lr(step: int, peak: float, warmup: int) -> float:
    """Linear warmup to `peak` over `warmup` steps, then decay with 1/sqrt(step)."""
    step = max(step, 1)
    return peak * min(step / warmup, math.sqrt(warmup / step))


def train(cfg: RunConfig, run_dir: Path, resume: bool = False, device: str = "auto") -> dict[str, Any]:
    """Train `cfg` into `run_dir` (tokenizer, checkpoints, log.csv, curves.png).
    Returns a summary: best validation metric, steps, timings."""
    device = resolve_device(device)
    dd = setup_distributed(device)
    dev = torch.device(device, dd.local_rank) if device == "cuda" else torch.device("cpu")
    tc = cfg.train
    if tc.threads and device == "cpu":
        torch.set_num_threads(tc.threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    last_path = run_dir / "last.pt"
    if not resume and last_path.exists():
        raise FileExistsError(f"{run_dir} already holds a run; pass --resume or use a new --run-dir")

    if dd.main:
        prepare_tokenizer(cfg, run_dir)
    if dd.world > 1:
        dist.barrier()
    pretrained: dict[str, Any] | None = None
    if cfg.task == "classification" and tc.pretrain_epochs > 0 and not (resume and last_path.exists()):
        # Phase 1 (resumable on its own): masked LM in run_dir/pretrain with this tokenizer.
        pre_dir = run_dir / "pretrain"
        if dd.main:
            pre_dir.mkdir(exist_ok=True)
            shutil.copyfile(run_dir / TOKENIZER_FILE, pre_dir / TOKENIZER_FILE)
        pretrained = train(pretrain_config(cfg), pre_dir, resume=(pre_dir / "last.pt").exists(), device=device)
        if pretrained.get("interrupted"):
            return {**pretrained, "phase": "pretrain"}
    tokenizer = Tokenizer(run_dir / TOKENIZER_FILE)
    task = make_task(cfg, tokenizer)
    train_split, valid_split = split_names(cfg)
    train_raw = task.raw(train_split)
    train_data = task.encode(train_raw, filter_long=True)
    valid_raw = task.raw(valid_split)
    valid_data = task.encode(valid_raw, filter_long=False)
    lengths = [task.length(e) for e in train_data]

    mcfg = model_config(cfg, tokenizer)
    torch.manual_seed(tc.seed)
    model = build_model(mcfg).to(dev)
    if pretrained is not None:
        model.load_state_dict(load_checkpoint(run_dir / "pretrain" / "last.pt", dev)["model"])
        if dd.main:
            log.info("initialised from the masked-LM pretraining in %s", run_dir / "pretrain")
    optimizer = torch.optim.Adam(
        model.parameters(), lr=tc.lr, betas=tuple(tc.betas), eps=tc.eps, weight_decay=tc.weight_decay
    )
    state = {
        "step": 0,
        "epoch": 0,
        "batch_in_epoch": 0,
        "best": -math.inf,
        "bad_epochs": 0,
        "history": [],
        "train_seconds": 0.0,
    }
    if resume and last_path.exists():
        ckpt = load_checkpoint(last_path, dev)
        changed = [k for k in config_changes(ckpt.get("run_config", {}), cfg.to_dict()) if k not in RESUMABLE_CHANGES]
        if changed:
            raise ValueError(
                f"cannot resume {last_path}: the config differs from the run's in {changed}; "
                "use a new --run-dir (only how long and how often may change on resume)"
            )
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        state.update(ckpt["state"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        if device == "cuda" and ckpt["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"], dev)
        if dd.main:
            log.info("resumed %s at epoch %d, step %d", last_path, state["epoch"], state["step"])
    if dd.main:
        log.info(
            "%s: %d parameters, %d train / %d valid examples, device %s x%d",
            cfg.name,
            count_parameters(model),
            len(train_data),
            len(valid_data),
            device,
            dd.world,
        )
    ddp_model = nn.parallel.DistributedDataParallel(model) if dd.world > 1 else model

    amp = tc.amp if tc.amp != "auto" else ("bf16" if device == "cuda" or cpu_has_bf16() else "off")
    autocast = (
        torch.autocast(device_type=device, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)
        if amp in ("bf16", "fp16")
        else nullcontext()
    )
    scaler = torch.amp.GradScaler(enabled=amp == "fp16")

    def checkpoint(path: Path) -> None:
        if not dd.main:
            return
        rng = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(dev) if device == "cuda" else None}
        _save(
            {
                "model_config": mcfg.to_dict(),
                "run_config": cfg.to_dict(),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "state": dict(state),
                "rng": rng,
            },
            path,
        )

    def valid_loss() -> float:
        model.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for b in token_batches([task.length(e) for e in valid_data], tc.max_tokens, 0, 0, False):
                with autocast:
                    loss, n = task.loss(model, task.collate([valid_data[i] for i in b], dev), 0.0)
                total, count = total + float(loss), count + n
        return total / max(count, 1)

    max_steps = tc.max_steps or math.inf
    stop = state["bad_epochs"] >= tc.patience > 0 or state["step"] >= max_steps
    interrupted = _Interrupt()
    while not stop and state["epoch"] < tc.epochs:
        epoch = state["epoch"]
        if tc.subword_alpha > 0:  # a fresh sampled segmentation each epoch, the same on resume
            Tokenizer.seed_sampling(tc.seed * 100_003 + epoch)
            train_data = task.encode(train_raw, filter_long=True, sample_alpha=tc.subword_alpha)
            lengths = [task.length(e) for e in train_data]
        batches = token_batches(lengths, tc.max_tokens, tc.seed, epoch)
        per_rank = len(batches) // dd.world
        batches = batches[dd.rank * per_rank : (dd.rank + 1) * per_rank]
        model.train()
        bar = tqdm(
            total=per_rank,
            initial=state["batch_in_epoch"],
            desc=f"epoch {epoch + 1}",
            disable=not dd.main,
            mininterval=1.0 if sys.stderr.isatty() else 60.0,
            dynamic_ncols=True,
        )
        loss_sum, tok_sum, t0 = 0.0, 0, time.perf_counter()
        seconds_before = state["train_seconds"]
        for bi in range(state["batch_in_epoch"], per_rank):
            lr = inverse_sqrt_lr(state["step"] + 1, tc.lr, tc.warmup_steps)
            for g in optimizer.param_groups:
                g["lr"] = lr
            batch = task.collate([train_data[i] for i in batches[bi]], dev)
            with autocast:
                loss, n = task.loss(ddp_model, batch, tc.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss / max(n, 1)).backward()
            scaler.unscale_(optimizer)
            if tc.clip_norm:
                nn.utils.clip_grad_norm_(model.parameters(), tc.clip_norm)
            scaler.step(optimizer)
            scaler.update()
            state["step"] += 1
            state["batch_in_epoch"] = bi + 1
            loss_sum, tok_sum = loss_sum + loss.item(), tok_sum + n
            elapsed = time.perf_counter() - t0
            bar.update(1)
            bar.set_postfix(
                loss=f"{loss_sum / max(tok_sum, 1):.3f}",
                lr=f"{lr:.2e}",
                **{task.rate_label: f"{tok_sum * dd.world / max(elapsed, 1e-9):.0f}"},
                refresh=False,
            )
            if state["step"] % tc.checkpoint_every == 0:
                state["train_seconds"] = seconds_before + elapsed
                checkpoint(last_path)
            if tc.snapshot_every and state["step"] % tc.snapshot_every == 0 and dd.main:
                # weights only, for averaging the last few (average_checkpoints)
                _save(
                    {"model_config": mcfg.to_dict(), "run_config": cfg.to_dict(), "model": model.state_dict()},
                    run_dir / f"step{state['step']}.pt",
                )
            if state["step"] >= max_steps or interrupted.requested:
                break
        bar.close()
        epoch_seconds = time.perf_counter() - t0
        if interrupted.requested:
            state["train_seconds"] = seconds_before + epoch_seconds
            checkpoint(last_path)
            log.warning("interrupted at step %d: saved %s; continue with --resume", state["step"], last_path)
            break
        state["train_seconds"] = seconds_before + epoch_seconds
        finished_epoch = state["batch_in_epoch"] >= per_rank
        if finished_epoch:
            state["epoch"] += 1
            state["batch_in_epoch"] = 0
        # Validation (main process), then every process learns whether to stop.
        decision = torch.zeros(1, device=dev)
        if dd.main:
            metrics = task.validate(model, valid_raw, dev)
            metrics[task.metric] = float(metrics[task.metric])  # checkpoints hold plain types only
            row = {
                "epoch": epoch + 1,
                "step": state["step"],
                "train_loss": round(loss_sum / max(tok_sum, 1), 4),
                "valid_loss": round(valid_loss(), 4),
                "valid_" + task.metric: metrics[task.metric],
                "lr": lr,
                f"{task.unit}_per_s": round(tok_sum * dd.world / max(epoch_seconds, 1e-9), 1),
                "epoch_seconds": round(epoch_seconds, 1),
            }
            state["history"].append(row)
            log.info("epoch %d: %s", epoch + 1, row)
            improved = metrics[task.metric] > state["best"]
            if improved:
                state["best"], state["bad_epochs"] = metrics[task.metric], 0
            else:
                state["bad_epochs"] += 1
            checkpoint(last_path)
            if improved:
                checkpoint(run_dir / "best.pt")
            if tc.average_last and finished_epoch:
                checkpoint(run_dir / f"epoch{state['epoch']}.pt")
                stale = run_dir / f"epoch{state['epoch'] - tc.average_last}.pt"
                stale.unlink(missing_ok=True)
            write_log(run_dir, state["history"], task.metric)
            if (tc.patience and state["bad_epochs"] >= tc.patience) or state["step"] >= max_steps:
                decision[0] = 1
        if dd.world > 1:
            dist.broadcast(decision, 0)
        stop = bool(decision[0])

    was_interrupted = interrupted.requested
    interrupted.restore()
    summary: dict[str, Any] = {
        "best_valid_" + task.metric: state["best"],
        "steps": state["step"],
        "epochs": state["epoch"],
        "train_seconds": round(state["train_seconds"], 1),
        "parameters": count_parameters(model),
    }
    if pretrained is not None:
        summary["pretrain"] = pretrained
    if was_interrupted:
        # Leave at once (a SIGTERM comes with a grace period); averaging belongs to a finished run.
        summary["interrupted"] = True
    elif dd.main and tc.average_last:
        epochs = sorted(run_dir.glob("epoch*.pt"), key=lambda p: int(p.stem[5:]))[-tc.average_last :]
        if len(epochs) >= 2:
            avg = average_checkpoints(epochs, run_dir / "averaged.pt")
            metrics = task.validate(model_from_checkpoint(avg, dev), valid_raw, dev)
            summary["averaged_valid_" + task.metric] = metrics[task.metric]
            log.info("average of %d checkpoints: valid %s %.2f", len(epochs), task.metric, metrics[task.metric])
    if dd.world > 1 and cfg.task != "pretrain":  # a pretraining phase hands the group on
        dist.destroy_process_group()
    return summary


class _Interrupt:
    """SIGTERM/SIGINT ask the loop to stop after the current step and save last.pt, so that
    `--resume` continues exactly. A second signal acts as usual."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, sig: int, frame: Any) -> None:
        self.requested = True
        signal.signal(sig, self._previous.get(sig, signal.SIG_DFL))

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def write_log(run_dir: Path, history: list[dict], metric: str) -> None:
    """log.csv, one row per epoch, and curves.png (losses and the validation metric)."""
    if not history:
        return
    with (run_dir / "log.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    plot_curves(history, metric, run_dir / "curves.png")


def plot_curves(history: list[dict], metric: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(epochs, [h["train_loss"] for h in history], label="train loss (smoothed CE)")
    ax.plot(epochs, [h["valid_loss"] for h in history], label="valid loss (CE)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss per token" if metric == "bleu" else "loss per example")
    ax2 = ax.twinx()
    ax2.plot(epochs, [h["valid_" + metric] for h in history], color="tab:green", marker="o", label=f"valid {metric}")
    ax2.set_ylabel(f"valid {metric}")
    lines = ax.get_lines() + ax2.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], loc="center right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
