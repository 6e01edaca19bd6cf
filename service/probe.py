"""Start-up probe: one decode worker on every core's thread, or two workers on half each?

On 2 vCPUs the continuous scheduler's auto default is two decode workers, each on one intra-op
thread (BENCHMARKS.md section 12: +35-62% capacity on a Zen 4). That is not true of every
2-vCPU machine: where onnxruntime's threads add up (the Zen 1 of section 13: a 32-row step 15.6
ms on one thread, 9.1 on two, two 16-row halves at once 8.5) the two are close, and a VM can be
the other way round. So when the operator left both to us (`TRANSERVE_THREADS=0`,
`TRANSERVE_DECODE_WORKERS=0`) on a CPU of C >= 2 usable cores, start-up times the first
translation bundle's decoder step on a realistic running batch (32 rows in flight, cache 24 of
32 slots, sources of 16 tokens, its English target vocabulary) laid out both ways: one loop of
32 rows on C threads, and two concurrent loops of 16 rows on C // 2 threads each; the same work,
interleaved rounds, the median of each, and the layout with more rows/s serves (`decide`: the
default, two workers, unless one worker is `MARGIN` faster, so that noise does not flip a
restart's choice). Any explicit setting skips it, as do one core, CUDA and the batch scheduler.

The probe's sessions are onnxruntime sessions of their own (per-session pools, spinning as the
shared pool's threads do), made outside `sessions.create_session` and closed before the shared
pool is set up: onnxruntime's global pool is a one-time choice made at the first session that
uses it, and a session with its own pool before that does not fix it (tested in
tests/service/test_threads_probe.py). Its cost: two decoder sessions, their first runs, and at most
~0.2 s of rounds (0.5-0.7 s in all on a loaded 2-vCPU Zen 3: BENCHMARKS.md section 13).
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.runtime import graph_io
from service.runtime.bundle import Manifest, find_bundles, load_manifest
from service.runtime.vocab import load_target_vocab
from service.settings import Settings, cores

log = logging.getLogger(__name__)

ROWS = 32  # rows in flight (the default max_batch_size), split evenly among the workers
CACHE = 24  # each row's position: slots written so far
WIDTH = 32  # a contract-3 batch's cache slots (the output limit of its longest source)
SOURCE = 16  # source tokens
ROUNDS = 5  # interleaved rounds (fewer when the budget runs out, at least MIN_ROUNDS)
MIN_ROUNDS = 3
TRIAL_S = 0.015  # each layout's share of a round (at least 2 steps)
BUDGET_S = 0.2  # the measuring (sessions' loads not included)
MARGIN = 0.05  # one worker must beat the default (two) by this much


@dataclass(frozen=True, order=True)
class Layout:
    """`workers` decode workers, each call on `threads` intra-op threads."""

    workers: int
    threads: int

    @property
    def label(self) -> str:
        return f"{self.workers}x{self.threads}"


@dataclass
class ThreadChoice:
    """What the decode workers and the onnxruntime calls run with, and why."""

    workers: int
    threads: int  # intra-op threads per call (0: onnxruntime's default, one per core)
    chosen_by: str  # "probe", "settings" (an explicit value, or one the probe does not apply to), "default"
    reason: str = ""
    rows_per_s: dict[str, float] = field(default_factory=dict)  # layout label -> median decoder rows/s
    probe_seconds: float | None = None  # the probe's start-up cost, sessions' loads included
    bundle: str | None = None  # whose decoder was timed


def candidates(n_cores: int) -> tuple[Layout, Layout]:
    """One worker on every core vs two on half each (the auto default); n_cores >= 2."""
    return Layout(1, n_cores), Layout(2, max(1, n_cores // 2))


def decide(rounds: dict[Layout, list[float]], default: Layout, margin: float = MARGIN) -> Layout:
    """The layout to serve from each layout's rows/s in interleaved rounds (round i of every
    layout measured side by side): another layout replaces `default` where the median of its
    per-round ratio to the default's is above 1 + `margin` (the best such one). Ratios of
    neighbouring measurements, so that a machine whose speed moves between rounds (a noisy
    neighbour, frequency) does not decide it. Pure: no timing here."""
    if default not in rounds or not rounds[default]:
        return max(rounds, key=lambda x: statistics.median(rounds[x]) if rounds[x] else 0.0)
    base = rounds[default]
    best, best_ratio = default, 1 + margin
    for layout, rates in rounds.items():
        ratios = [r / b for r, b in zip(rates, base) if b > 0]
        if layout != default and ratios and statistics.median(ratios) > best_ratio:
            best, best_ratio = layout, statistics.median(ratios)
    return best


def choose(settings: Settings, cuda: bool, n_cores: int | None = None) -> ThreadChoice:
    """The decode workers and intra-op threads to serve with: the settings' where they decide
    (or the probe does not apply), else the probe's pick. Logs one line."""
    n = cores() if n_cores is None else n_cores
    workers, threads = settings.workers(cuda), settings.intra_threads(cuda)
    skip = _skip_reason(settings, cuda, n)
    if skip is not None:
        choice = ThreadChoice(workers, threads, "settings", skip)
        log.info("decode layout: %d worker(s) x %s thread(s) (%s)", workers, threads or "default", skip)
        return choice
    one, two = candidates(n)
    bundle = _probe_bundle(settings.model_dir)
    if bundle is None:
        return ThreadChoice(workers, threads, "default", "no translation bundle to probe")
    t0 = time.perf_counter()
    try:
        figures = measure(*bundle, settings, (one, two))
    except Exception as e:  # noqa: BLE001 - the probe is advice: the default serves when it fails
        log.warning("decode layout probe on %s failed (%s: %s); the default serves", bundle[0], type(e).__name__, e)
        return ThreadChoice(workers, threads, "default", f"probe failed: {type(e).__name__}")
    seconds = round(time.perf_counter() - t0, 3)
    pick = decide(figures, two)
    rows = {layout.label: round(statistics.median(v), 1) for layout, v in figures.items()}
    log.info(
        "decode layout probe (%s decoder, %d rows in flight, %.2fs): %s rows/s; serving %d worker(s) x %d thread(s)",
        bundle[0].name,
        ROWS,
        seconds,
        ", ".join(f"{k} {v:,.0f}" for k, v in rows.items()),
        pick.workers,
        pick.threads,
    )
    return ThreadChoice(pick.workers, pick.threads, "probe", "", rows, seconds, bundle[0].name)


def _skip_reason(settings: Settings, cuda: bool, n_cores: int) -> str | None:
    if not settings.layout_probe:
        return "TRANSERVE_LAYOUT_PROBE off"
    if settings.threads or settings.decode_workers:
        return "TRANSERVE_THREADS / TRANSERVE_DECODE_WORKERS set"
    if settings.scheduler != "continuous" or not settings.batching:
        return "one worker: not the continuous scheduler"
    if cuda:
        return "CUDA"
    if n_cores < 2:
        return "one usable core"
    return None


def _probe_bundle(model_dir: Path) -> tuple[Path, Manifest] | None:
    """The first translation bundle of the model directory (by name) whose manifest reads."""
    for bundle_dir in find_bundles(model_dir) if model_dir.is_dir() else []:
        try:
            manifest = load_manifest(bundle_dir, verify=False)  # checked when it loads, after this
        except Exception:  # noqa: BLE001 - a broken bundle is the registry's to report
            continue
        if manifest.task == "translation":
            return bundle_dir, manifest
    return None


def measure(
    bundle_dir: Path,
    manifest: Manifest,
    settings: Settings,
    layouts: tuple[Layout, ...],
    rounds: int = ROUNDS,
    trial_s: float = TRIAL_S,
    budget_s: float = BUDGET_S,
) -> dict[Layout, list[float]]:
    """Each layout's decoder rows/s in each round: `workers` concurrent step loops of ROWS /
    workers rows on a session of `threads` intra-op threads; the same steps for each, the
    layouts' order alternating from round to round."""
    variant = settings.variant if settings.variant in manifest.variants else manifest.default_variant
    path = bundle_dir / manifest.graph(variant, "decoder").file
    vocab = load_target_vocab(bundle_dir, manifest, variant) if settings.target_vocab else None
    initializers, n_logits = {}, manifest.vocab_size
    if vocab is not None and vocab.ids:  # the decoder as it serves English (or the widest target)
        lang = "en" if "en" in vocab.ids else max(vocab.ids, key=lambda k: len(vocab.ids[k]))
        initializers, n_logits = vocab.initializers(lang), len(vocab.ids[lang])
    spinning = settings.thread_pool == "shared"
    sessions = {
        t: _session(path, t, spinning, settings.memory_arena, initializers) for t in {x.threads for x in layouts}
    }
    try:
        loops = {
            x: [_Loop(sessions[x.threads], ROWS // x.workers, n_logits, i) for i in range(x.workers)] for x in layouts
        }
        for x in layouts:  # warm-up: the first runs plan and allocate
            _trial(loops[x], 1)
        t0 = time.perf_counter()
        _trial(loops[layouts[0]], 1)
        steps = max(2, round(trial_s / max(time.perf_counter() - t0, 1e-4)))
        rates: dict[Layout, list[float]] = {x: [] for x in layouts}
        start = time.perf_counter()
        for r in range(rounds):
            order = layouts if r % 2 == 0 else layouts[::-1]
            for x in order:
                seconds = _trial(loops[x], steps)
                rates[x].append(sum(loop.rows for loop in loops[x]) * steps / seconds)
            if r + 1 >= MIN_ROUNDS and time.perf_counter() - start > budget_s:
                break
        return rates
    finally:
        sessions.clear()


def _session(
    path: Path, threads: int, spinning: bool, arena: bool, initializers: dict[str, np.ndarray]
) -> ort.InferenceSession:
    """A CPU session with a pool of its own (not the shared one, not counted by sessions.py)."""
    opts = ort.SessionOptions()
    opts.enable_cpu_mem_arena = arena
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.inter_op_num_threads = 1
    opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    opts.log_severity_level = 3
    held = [ort.OrtValue.ortvalue_from_numpy(v) for v in initializers.values()]
    for name, value in zip(initializers, held):
        opts.add_initializer(name, value)
    session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    session._probe_initializers = held  # type: ignore[attr-defined] # as sessions.create_session keeps them
    return session


class _Loop:
    """One running batch's decoder step, its arrays bound once (caches written in place where
    the decoder is contract 3), as the service's BoundStep runs it."""

    def __init__(self, session: ort.InferenceSession, rows: int, n_logits: int, seed: int) -> None:
        self.session, self.rows = session, rows
        rng = np.random.default_rng(seed)
        names = {i.name for i in session.get_inputs()}
        static = graph_io.SELF_MASK not in names
        sizes = {"batch": rows, "src_len": SOURCE, "cache_len": WIDTH, "past_len": CACHE, "present_len": CACHE + 1}
        feeds: dict[str, np.ndarray] = {}
        for spec in session.get_inputs():
            shape = [d if isinstance(d, int) else sizes[d] for d in spec.shape]
            if spec.name == graph_io.POSITION:
                feeds[spec.name] = np.full(shape, CACHE, dtype=np.int64)
            elif spec.type == "tensor(int64)":
                feeds[spec.name] = np.full(shape, 7, dtype=np.int64)
            elif spec.type == "tensor(bool)":
                feeds[spec.name] = np.ones(shape, dtype=bool)
            else:
                feeds[spec.name] = rng.random(shape, dtype=np.float32)
        self.feeds = feeds
        if not static:  # contract 2: each step through run, new caches as outputs (CopyStep)
            self.bind = None
            return
        outputs = [o.name for o in session.get_outputs()]
        self.held = [ort.OrtValue.ortvalue_from_numpy(v) for v in feeds.values()]
        bind = session.io_binding()
        for name, value in zip(feeds, self.held):
            bind.bind_ortvalue_input(name, value)
        by_name = dict(zip(feeds, self.held))
        self.logits = np.empty((rows, n_logits), dtype=np.float32)
        self.held.append(ort.OrtValue.ortvalue_from_numpy(self.logits))
        bind.bind_ortvalue_output(graph_io.LOGITS, self.held[-1])
        for name in outputs[1:]:
            past = name.replace("present_", "past_", 1)
            if name.startswith("present_") and past in by_name:
                bind.bind_ortvalue_output(name, by_name[past])
            else:
                bind.bind_output(name, "cpu")
        self.bind = bind

    def run(self, steps: int) -> None:
        for _ in range(steps):
            if self.bind is not None:
                self.session.run_with_iobinding(self.bind)
            else:
                self.session.run(None, self.feeds)


def _trial(loops: list[_Loop], steps: int) -> float:
    """Seconds for every loop to run `steps` steps, all at once (one thread each)."""
    if len(loops) == 1:
        t0 = time.perf_counter()
        loops[0].run(steps)
        return time.perf_counter() - t0
    errors: list[BaseException] = []

    def run(loop: _Loop) -> None:
        try:
            loop.run(steps)
        except BaseException as e:  # noqa: BLE001 - raised in the caller
            errors.append(e)

    helpers = [threading.Thread(target=run, args=(loop,), daemon=True) for loop in loops[1:]]
    t0 = time.perf_counter()
    for h in helpers:
        h.start()
    run(loops[0])
    for h in helpers:
        h.join()
    seconds = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return seconds
