"""onnxruntime sessions: execution provider choice and thread settings, in one place."""

from __future__ import annotations

import logging
from pathlib import Path

import onnxruntime as ort
import sentencepiece as spm

from service.bundle import Manifest

log = logging.getLogger(__name__)

PROVIDERS = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}


def resolve_providers(choice: str) -> list[str]:
    """`auto` takes CUDA when this onnxruntime build has it, else the CPU; `cuda` insists."""
    available = ort.get_available_providers()
    if choice == "auto":
        choice = "cuda" if PROVIDERS["cuda"] in available else "cpu"
    if choice not in PROVIDERS:
        raise ValueError(f"provider={choice!r} must be auto, cuda or cpu")
    if PROVIDERS[choice] not in available:
        raise ValueError(f"provider {choice!r} is not available in this onnxruntime ({available})")
    return [PROVIDERS[choice]] + ([PROVIDERS["cpu"]] if choice != "cpu" else [])


def create_session(path: Path, providers: list[str], threads: int, memory_arena: bool = False) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    # The CPU arena keeps every chunk it ever allocated and grows in steps with new batch
    # shapes; without it buffers go back to the allocator after each run, at the same speed
    # (docs/reliability.md: +13.3 MB in a 40-minute soak with it, +1.2 MB in 30 minutes without).
    opts.enable_cpu_mem_arena = memory_arena
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.inter_op_num_threads = 1
    if threads:
        opts.intra_op_num_threads = threads
    # Spinning threads burn the cores other sessions (and the event loop) need; on a small
    # machine turning it off roughly doubled decoding throughput (ARCHITECTURE.md).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    return session


class BundleEngine:
    """What every engine shares: the chosen variant, its graphs' sessions, the tokenizer."""

    def __init__(self, bundle_dir: Path, manifest: Manifest, variant: str | None, memory_arena: bool = False) -> None:
        self.bundle_dir, self.manifest = bundle_dir, manifest
        self.memory_arena = memory_arena
        self.variant = variant or manifest.default_variant
        if self.variant not in manifest.variants:
            raise ValueError(f"variant {self.variant!r} not in bundle {manifest.name} ({sorted(manifest.variants)})")
        self.sp = spm.SentencePieceProcessor(model_file=str(bundle_dir / manifest.tokenizer))
        self.max_len = manifest.max_len
        self.provider = ""

    def session(self, role: str, providers: list[str], threads: int) -> ort.InferenceSession:
        session = create_session(
            self.bundle_dir / self.manifest.graph(self.variant, role).file, providers, threads, self.memory_arena
        )
        self.provider = session.get_providers()[0]
        return session
