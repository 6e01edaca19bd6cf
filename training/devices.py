"""Devices: CPU or CUDA, torchrun's process group, and whether this CPU has native bf16."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist


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


def cpuinfo() -> str:
    """/proc/cpuinfo, or "" where there is none (not Linux)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_has_bf16() -> bool:
    """Native bf16 matrix units (AVX512-BF16 or AMX). There, bf16 autocast trains much
    faster than fp32 (docs/training.md); elsewhere it is emulated and slower."""
    flags = cpuinfo()
    return "avx512_bf16" in flags or "amx_bf16" in flags
