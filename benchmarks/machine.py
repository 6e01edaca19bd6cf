"""What machine a benchmark ran on, recorded with every result: the CPU model and the instruction
set extensions that decide which kernels onnxruntime (MLAS) and CTranslate2 (oneDNN/MKL) pick:
AVX2, AVX-512, VNNI (int8 dot products), BF16, AMX (Intel's matrix tiles); and the CPU family and
model numbers, since a KVM guest's model name may say only "AMD EPYC" (family 25 is Zen 3/4,
26 Zen 5)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

FLAGS = (
    "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
    "amx_tile", "amx_int8", "amx_bf16",
)  # fmt: skip


def describe() -> dict:
    model, flags, numbers = platform.processor() or platform.machine(), set(), {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() in ("cpu family", "model"):
                numbers[key.strip().replace("cpu ", "")] = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    return {"cpu": model, **numbers, "cores": os.cpu_count(), "flags": [f for f in FLAGS if f in flags]}
