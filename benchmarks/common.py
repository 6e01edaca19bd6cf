"""What the offline benchmark scripts share: a bundle opened as the service opens it, and timed
passes over length-sorted batches.

`open_translator` is the one way a script gets our engine, so that every figure is of the
service's own `Translator` on a bundle whose files passed the manifest's checksums. The service
modules are imported inside the functions: a benchmark worker that measures another engine
(PyTorch, CTranslate2) must not load onnxruntime into the process whose memory it reports.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.runtime.bundle import Manifest
    from service.runtime.translator import Translator


def load_bundle(bundle: str | Path) -> Manifest:
    """`bundle`'s manifest, every file checked against its sha256 (as the service loads it)."""
    from service.runtime.bundle import load_manifest

    return load_manifest(Path(bundle), verify=True)


def open_translator(
    bundle: str | Path,
    threads: int = 2,
    variant: str | None = None,
    *,
    providers: str = "cpu",
    shared_pool: bool = False,
    retain_freed_mb: int | None = None,
    **engine_options: Any,
) -> Translator:
    """The service's `Translator` on `bundle` (its manifest verified, `load_bundle`), `variant`
    (None: the manifest's served one) with `threads` intra-op threads on `providers` (the
    service's `TRANSERVE_PROVIDER` choices). `engine_options` go to the Translator as they are
    (`memory_arena`, `target_vocab`, ...).

    Two settings are process-wide and one-time in onnxruntime and glibc, so they are opt-in: a
    script that asks for them must not open another engine before. `shared_pool`: one
    onnxruntime thread pool for every session, as the service runs by default (without it each
    session has its own, as in-process tests do); `retain_freed_mb`: glibc keeps that much freed
    memory instead of returning it (the service's `TRANSERVE_RETAIN_FREED_MB`, default 64)."""
    from service.runtime.allocator import retain_freed_memory
    from service.runtime.sessions import resolve_providers, share_thread_pool
    from service.runtime.translator import Translator

    if shared_pool:
        share_thread_pool(threads)
    if retain_freed_mb is not None:
        retain_freed_memory(retain_freed_mb)
    manifest = load_bundle(bundle)
    return Translator(
        Path(bundle), manifest, resolve_providers(providers), threads=threads, variant=variant, **engine_options
    )


def length_batches(n: int, lengths: Sequence[int], size: int) -> list[list[int]]:
    """Sentence indices sorted by length, cut into batches of `size` (every engine alike)."""
    order = sorted(range(n), key=lambda i: lengths[i])
    return [order[i : i + size] for i in range(0, n, size)]


def timed(
    run: Callable[[list[int]], list], batches: list[list[int]], n: int, repeats: int, cpu: list[float] | None = None
) -> tuple[list[float], list]:
    """`run(batch)` over every batch, `repeats` times after a warm-up (sessions, allocators,
    caches): the seconds of each pass and each sentence's output. `cpu`, when given, gets each
    pass's CPU seconds of this process (all its threads, user and system): on a machine others
    load, a one-thread configuration's tokens per CPU-second move less than its wall-clock rate."""
    run(batches[0][:2])
    times: list[float] = []
    outputs: list = [None] * n
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        for batch in batches:
            for i, out in zip(batch, run(batch)):
                outputs[i] = out
        times.append(time.perf_counter() - t0)
        if cpu is not None:
            cpu.append(time.process_time() - c0)
    return times, outputs


def status_mb(field: str) -> float:
    """A `/proc/self/status` memory field (`VmRSS`: resident now; `VmHWM`: the peak, which starts
    afresh at exec, so a worker does not inherit its parent's) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")
