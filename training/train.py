"""The training loop, for every task: translation (Seq2SeqTransformer) and classification.

A task object knows how to load, batch and score its data; the loop knows optimisation,
checkpoints, resumption, validation, early stopping, logging and distribution. Runs on CPU or
CUDA, and under ``torchrun`` (DistributedDataParallel, one process per device) unchanged.
"""

from __future__ import annotations

import logging
import math
import shutil
import signal
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from training.checkpoint import (
    WEIGHTS_FILE,
    average_checkpoints,
    load_checkpoint,
    model_config,
    model_from_checkpoint,
    save_checkpoint,
)
from training.config import RESUMABLE_CHANGES, RunConfig, config_changes
from training.data import token_batches
from training.devices import cpu_has_bf16, resolve_device, setup_distributed
from training.report import write_log
from training.tasks import (
    TOKENIZER_FILE,
    imported_bundle,
    make_task,
    prepare_imported,
    prepare_tokenizer,
    pretrain_config,
    run_tokenizer,
    split_names,
)
from training.tokenizer import CodecTokenizer, Tokenizer
from training.transformer import build_model, count_parameters

log = logging.getLogger(__name__)


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

    init = Path(tc.init_from) if tc.init_from else None
    imported = imported_bundle(init) if init is not None else None
    if imported is not None:
        # An imported model (training/importers): its weights.pt, and its codec copied into the run.
        init = imported / WEIGHTS_FILE
        if dd.main:
            prepare_imported(imported, run_dir)
    elif init is not None and dd.main and not (run_dir / TOKENIZER_FILE).exists():
        # Continue from released weights: their tokenizer is the one beside them.
        if not (init.parent / TOKENIZER_FILE).exists():
            raise FileNotFoundError(f"train.init_from={init}: no {TOKENIZER_FILE} beside it")
        shutil.copyfile(init.parent / TOKENIZER_FILE, run_dir / TOKENIZER_FILE)
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
    tokenizer = run_tokenizer(run_dir)
    task = make_task(cfg, tokenizer)
    train_split, valid_split = split_names(cfg)
    train_raw = task.raw(train_split)
    train_data = task.encode(train_raw, filter_long=True)
    valid_raw = task.raw(valid_split)
    valid_data = task.encode(valid_raw, filter_long=False)
    lengths = [task.length(e) for e in train_data]

    if isinstance(tokenizer, CodecTokenizer):  # the imported model's own config; [model] sets dropout only
        mcfg = tokenizer.model_config(cfg.model)
    else:
        mcfg = model_config(cfg, tokenizer)
    torch.manual_seed(tc.seed)
    model = build_model(mcfg).to(dev)
    if pretrained is not None:
        model.load_state_dict(load_checkpoint(run_dir / "pretrain" / "last.pt", dev)["model"])
        if dd.main:
            log.info("initialised from the masked-LM pretraining in %s", run_dir / "pretrain")
    elif init is not None and not (resume and last_path.exists()):
        model.load_state_dict(load_checkpoint(init, dev)["model"])
        if dd.main:
            log.info("initialised from the weights in %s", init)
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
        save_checkpoint(
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
                save_checkpoint(
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
