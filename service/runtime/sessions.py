"""onnxruntime sessions: execution provider choice and thread settings, in one place."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import sentencepiece as spm

from service.runtime.bundle import Manifest
from service.runtime.graph_io import check_session

log = logging.getLogger(__name__)

PROVIDERS = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}

# Threads of the one intra-op pool every session of this process shares, once set up (None:
# each session has its own pool). A process-wide, one-time choice in onnxruntime: it has to be
# made before the first session exists, and then every session must use that pool.
_shared_pool_threads: int | None = None
_sessions_created = 0


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


def share_thread_pool(threads: int) -> None:
    """From now on, every session this process creates runs on one shared intra-op pool of
    `threads` threads (0 = one per core): onnxruntime's global thread pool. A translation is an
    encoder run then ~20 decoder runs, each of ~60 small nodes; with a pool per session the
    encoder's and decoder's pools (and every other model's) fight over the cores unless their
    threads sleep between nodes, and waking them costs more than the nodes at these sizes. One
    shared pool can keep its threads spinning, which is faster on small machines (BENCHMARKS.md,
    "thread pools"). Call it before the first session; a
    second call with the same size is a no-op."""
    global _shared_pool_threads
    if _shared_pool_threads is not None:
        if threads != _shared_pool_threads:
            log.warning("thread pool already shared with %d threads; ignoring %d", _shared_pool_threads, threads)
        return
    if _sessions_created:
        raise RuntimeError("share_thread_pool must run before this process creates its first onnxruntime session")
    ort.set_global_thread_pool_sizes(threads, 1)
    _shared_pool_threads = threads


def create_session(
    path: Path,
    providers: list[str],
    threads: int,
    memory_arena: bool = False,
    initializers: dict[str, np.ndarray] | None = None,
) -> ort.InferenceSession:
    """A session on the shared pool when share_thread_pool() ran, else on its own pool of
    `threads` threads (0 = one per core) that sleep between nodes. `initializers` replace the
    graph's of the same names (a target vocabulary's projection, runtime/vocab.py)."""
    global _sessions_created
    opts = ort.SessionOptions()
    # The CPU arena keeps every chunk it ever allocated and grows in steps with new batch
    # shapes; without it buffers go back to the allocator after each run, at the same speed
    # (docs/reliability.md, "memory").
    opts.enable_cpu_mem_arena = memory_arena
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if _shared_pool_threads is not None:
        opts.use_per_session_threads = False
    else:
        opts.inter_op_num_threads = 1
        if threads:
            opts.intra_op_num_threads = threads
        # Each session's own spinning threads burn the cores the other sessions (and the event
        # loop) need; on a small machine turning it off is much faster (BENCHMARKS.md, "thread pools").
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    held = []
    for name, value in (initializers or {}).items():
        held.append(ort.OrtValue.ortvalue_from_numpy(value))  # the session reads it at creation
        opts.add_initializer(name, held[-1])
    session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    session._transerve_initializers = held  # type: ignore[attr-defined] # their memory is the session's weights
    _sessions_created += 1
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

    def session(
        self, role: str, providers: list[str], threads: int, initializers: dict[str, np.ndarray] | None = None
    ) -> ort.InferenceSession:
        """The session of graph `role`, checked against the graph contract (graph_io)."""
        spec = self.manifest.graph(self.variant, role)
        session = create_session(self.bundle_dir / spec.file, providers, threads, self.memory_arena, initializers)
        check_session(session, spec, role, self.manifest.model, f"{self.bundle_dir}/{spec.file}")
        self.provider = session.get_providers()[0]
        return session
