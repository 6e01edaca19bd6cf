"""Checkpoints: model configs, saving atomically, loading without pickle, averaging."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.config import RunConfig
from training.tokenizer import Tokenizer
from training.transformer import TransformerConfig, build_model


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


def save_checkpoint(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)  # atomic: an interrupted save never leaves a broken checkpoint


def average_checkpoints(paths: list[Path], out: Path) -> Path:
    """Average the parameters of several checkpoints of one model (Vaswani et al. 2017, 6.1)."""
    ckpts = [load_checkpoint(p) for p in paths]
    avg = {}
    tied: dict[tuple[int, tuple], Any] = {}  # tied weights (the embedding) stay one tensor
    for key, value in ckpts[0]["model"].items():
        if value.is_floating_point():
            ident = (value.data_ptr(), tuple(value.shape))
            if ident not in tied:
                tied[ident] = sum(c["model"][key] for c in ckpts) / len(ckpts)
            avg[key] = tied[ident]
        else:
            avg[key] = value
    save_checkpoint({**ckpts[-1], "model": avg, "averaged_from": [p.name for p in paths]}, out)
    return out


WEIGHTS_FILE = "weights.pt"


def export_weights(ckpt: Path, out: Path) -> Path:
    """The model's weights alone, in fp16 (half the size), with its configs: what a fresh clone
    needs to rebuild the PyTorch model (the CTranslate2 comparison on the same weights, or more
    training with train.init_from). No optimizer state."""
    c = load_checkpoint(ckpt)
    half: dict[str, Any] = {}
    shared: dict[tuple[int, tuple], Any] = {}  # tied weights (the embedding) stay one tensor
    for k, v in c["model"].items():
        key = (v.data_ptr(), tuple(v.shape))
        if key not in shared:
            shared[key] = v.half() if v.is_floating_point() else v
        half[k] = shared[key]
    save_checkpoint({"model_config": c["model_config"], "run_config": c.get("run_config", {}), "model": half}, out)
    return out
