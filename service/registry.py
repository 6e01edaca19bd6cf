"""Loads the bundles of the model directory; a bad bundle is refused and reported, the rest serve.

With ``max_loaded_models`` 0 (the default) every bundle is loaded at start-up and kept. With a
bound N, start-up checks every bundle's manifest and checksums and loads the classifiers only
(they stay loaded); each translation bundle is *lazy*: it serves (its pairs are routed, listed by
/languages, counted by /ready) and its engine is loaded at the first request that needs it
(`Registry.using`, which every model call of the scheduler goes through: scheduling/submit.py),
in a thread, never on the event loop. Loads and evictions run one at a time (`_loading`): two
requests for one unloaded bundle load it once, and each load's resident-memory change is its own.
A loaded engine joins the scheduler (`connect`'s `on_load`). When N translation engines are
loaded, the least recently used one is unloaded first, unless a request is using it (`users`) or
the scheduler still holds work of it (`on_evict` refuses): then the next one; when every one is
in use, the bound is exceeded until one is released, and then unloaded back down to it. A lazy
bundle whose load fails (its files changed since start-up, a graph onnxruntime refuses) is
failed from then on, as a bundle refused at start-up: its requests answer 503 naming it, /ready
and /models list it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import NamedTuple

from service import probe
from service.errors import ServiceError
from service.metrics import Metrics
from service.runtime.allocator import retain_freed_memory, trim_heap
from service.runtime.bundle import BundleError, Manifest, find_bundles, load_manifest, verify_files
from service.runtime.classifier import Classifier
from service.runtime.sessions import resolve_providers, share_thread_pool
from service.runtime.translator import Translator
from service.settings import Settings

log = logging.getLogger(__name__)

PIVOT = "en"  # the language pairs without a direct model are translated through

Engine = Translator | Classifier


class Step(NamedTuple):
    """One model call of a route: `model` translates `source` into `target`."""

    model: str
    source: str
    target: str


Route = list[Step]  # a pair's steps: its direct model, or two through English


class ModelDirError(Exception):
    """The model directory is missing or holds no bundle: the service cannot start."""


@dataclass
class LoadedModel:
    name: str
    manifest: Manifest | None
    engine: Engine | None = None
    error: str | None = None
    bundle_dir: Path | None = None
    lazy: bool = False  # loaded on demand and evictable (a translation bundle under max_loaded_models)
    users: int = 0  # model calls using it now (Registry.using): never evicted meanwhile
    last_used: float = 0.0  # time.monotonic() of its last use: the least recently used is evicted first
    load_seconds: float | None = None  # its engine's load, while loaded
    memory_bytes: int | None = None  # the process's resident memory change over that load (RSS after - before)
    file_bytes: int | None = None  # its loaded variant's ONNX files together
    # lazy: each file's (size, mtime) when its checksums were verified at start-up (a load
    # verifies them again only when these changed)
    file_stats: dict[str, tuple[int, int]] | None = None

    @property
    def ready(self) -> bool:
        """It serves: loaded, or lazy and checked at start-up (loaded at its first request)."""
        return self.engine is not None or (self.lazy and self.error is None)

    @property
    def loaded(self) -> bool:
        return self.engine is not None


Loader = Callable[[Path, Manifest], Engine]  # a bundle's engine (`_engine` with the settings')


@dataclass
class Registry:
    models: dict[str, LoadedModel] = field(default_factory=dict)
    # (source, target) -> translation model name
    pairs: dict[tuple[str, str], str] = field(default_factory=dict)
    # pairs whose only bundle failed to load -> that bundle
    failed_pairs: dict[tuple[str, str], str] = field(default_factory=dict)
    cuda: bool = False  # the sessions run on the CUDA provider
    max_loaded: int = 0  # translation engines loaded at once (0: all, loaded at start-up)
    # the continuous scheduler's decode workers and each onnxruntime call's intra-op threads (0:
    # onnxruntime's default): the settings', or the start-up probe's pick (service/probe.py);
    # `layout` None (a registry not made by load_registry): the settings' alone
    workers: int = 1
    threads: int = 0
    layout: probe.ThreadChoice | None = None
    loader: Loader | None = None
    metrics: Metrics | None = None
    # told of each engine loaded after start-up, before any request uses it (the scheduler adds it)
    on_load: Callable[[str, Engine], None] | None = None
    # asked before an engine is unloaded: False while the scheduler holds work of it (nothing changes)
    on_evict: Callable[[str], bool] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # users, last_used, engine
    _loading: threading.Lock = field(default_factory=threading.Lock, repr=False)  # one load or eviction at a time

    @property
    def lazy(self) -> bool:
        """Translation engines are loaded on demand, at most `max_loaded` at once."""
        return self.max_loaded > 0

    def connect(
        self, on_load: Callable[[str, Engine], None], on_evict: Callable[[str], bool], metrics: Metrics | None = None
    ) -> None:
        """The scheduler's hooks: `on_load(name, engine)` before a lazily loaded engine serves,
        `on_evict(name)` before one is unloaded (False: not now, it still has work); `metrics`
        counts loads and evictions from now on, and start-up's loads at once."""
        self.on_load, self.on_evict, self.metrics = on_load, on_evict, metrics
        for m in self.models.values():
            if m.engine is not None:
                self._count_load(m.name, "ok", m.load_seconds)
            elif m.error is not None:
                self._count_load(m.name, "failed")

    def tasks_missing(self) -> list[str]:
        """Tasks that some bundle serves (by its manifest) but no loaded or loadable model does."""
        wanted = {m.manifest.task for m in self.models.values() if m.manifest is not None}
        served = {m.manifest.task for m in self.models.values() if m.ready and m.manifest is not None}
        return sorted(wanted - served)

    def translators(self) -> dict[str, Translator]:
        """The translation engines loaded now."""
        return {n: m.engine for n, m in self.models.items() if isinstance(m.engine, Translator)}

    def route(self, source: str, target: str) -> Route | None:
        """The translation steps from `source` to `target`: the direct model, else through
        English (zh->de = zh->en, en->de); None if neither exists."""
        if (source, target) in self.pairs:
            return [Step(self.pairs[(source, target)], source, target)]
        if PIVOT not in (source, target) and (source, PIVOT) in self.pairs and (PIVOT, target) in self.pairs:
            return [Step(self.pairs[(source, PIVOT)], source, PIVOT), Step(self.pairs[(PIVOT, target)], PIVOT, target)]
        return None

    def targets(self) -> dict[str, set[str]]:
        """Every language a source can reach, directly or through English (loaded or not)."""
        langs = {lang for pair in self.pairs for lang in pair}
        return {s: {t for t in langs if t != s and self.route(s, t)} for s in langs}

    def classifiers(self) -> dict[str, Classifier]:
        return {n: m.engine for n, m in self.models.items() if isinstance(m.engine, Classifier)}

    # -- lazy loading -------------------------------------------------------------------------

    def unavailable(self, name: str) -> ServiceError:
        """The answer to a request for a bundle that failed to load (503, a stable message naming it)."""
        return ServiceError(503, f"model {name} failed to load: {self.models[name].error}")

    async def engine(self, name: str) -> Engine:
        """Model `name`'s engine, loaded first (off the event loop) when it is lazy and unloaded;
        503 (`unavailable`) when it failed. It may be evicted as soon as this returns: what runs
        it goes through `using`."""
        async with self.using(name) as engine:
            return engine

    async def translator(self, name: str) -> Translator:
        """`engine(name)` of a translation model."""
        engine = await self.engine(name)
        assert isinstance(engine, Translator), f"{name} is not a translation model"
        return engine

    @asynccontextmanager
    async def using(self, name: str) -> AsyncIterator[Engine]:
        """Model `name`'s engine, kept loaded until the block ends (a lazy one is loaded first,
        in a thread). Not lazy: the engine as it is, nothing counted."""
        m = self.models[name]
        if not m.lazy:
            if m.engine is None:
                raise self.unavailable(name)
            yield m.engine
            return
        engine = await self._acquire(m)
        try:
            yield engine
        finally:
            self._release(m)

    async def _acquire(self, m: LoadedModel) -> Engine:
        with self._lock:
            if m.error is not None:
                raise self.unavailable(m.name)
            m.users += 1  # before the load: nothing evicts it between its load and its use
            m.last_used = time.monotonic()
            engine = m.engine
        if engine is None:
            try:
                await asyncio.to_thread(self._load, m)
            except BaseException:  # failed, or the caller left (the load goes on, and the engine stays)
                self._release(m)
                raise
            engine = m.engine  # kept loaded: `users` counts this call
            assert engine is not None
        return engine

    def _release(self, m: LoadedModel) -> None:
        with self._lock:
            m.users -= 1
            over = len(self._loaded()) > self.max_loaded
        if over:  # it was exceeded while every engine was in use: back to the bound, off the event loop
            asyncio.get_running_loop().run_in_executor(None, self._shrink)

    def _loaded(self) -> list[LoadedModel]:
        return [m for m in self.models.values() if m.lazy and m.engine is not None]

    def _load(self, m: LoadedModel) -> None:
        """Load lazy model `m` (in a thread), making room first; 503 when it fails. (The engine is
        not the thread's result: a future holding it could outlive its eviction.)"""
        with self._loading:
            if m.engine is not None:  # another request loaded it meanwhile
                return
            if m.error is not None:  # another request's load of it failed meanwhile
                raise self.unavailable(m.name)
            self._evict_down_to(self.max_loaded - 1)
            bundle_dir, manifest, loader = m.bundle_dir, m.manifest, self.loader
            assert bundle_dir is not None and manifest is not None and loader is not None

            def load() -> Engine:
                if _file_stats(bundle_dir, manifest) != m.file_stats:  # changed since start-up: checksums again
                    verify_files(bundle_dir, manifest)
                return loader(bundle_dir, manifest)

            try:
                engine, seconds, memory = _measured(load)
                if self.on_load is not None:
                    self.on_load(m.name, engine)
            except Exception as e:  # noqa: BLE001 - a bundle that cannot load fails alone, as at start-up
                with self._lock:
                    m.error = _error_text(e, bundle_dir, m.name)
                log.error("lazy load of bundle %s failed: %s", m.name, m.error)
                self._count_load(m.name, "failed")
                raise self.unavailable(m.name) from None
            with self._lock:
                m.engine = engine
                m.load_seconds, m.memory_bytes, m.file_bytes = seconds, memory, _onnx_bytes(bundle_dir, engine)
            self._count_load(m.name, "ok", seconds)
            log.info("loaded %s on demand in %.2fs (%s MB resident)", m.name, seconds, _mb(memory))

    def _shrink(self) -> None:
        """Unload idle engines down to the bound (after it was exceeded: `_release`), in a thread."""
        try:
            with self._loading:
                self._evict_down_to(self.max_loaded)
        except Exception:
            log.exception("unloading engines down to max_loaded_models=%d failed", self.max_loaded)

    def _evict_down_to(self, bound: int) -> None:
        """Unload the least recently used idle engines until at most `bound` are loaded (holds
        `_loading`); those in use stay, so more may remain."""
        while True:
            with self._lock:
                loaded = self._loaded()
                idle = sorted((x for x in loaded if not x.users), key=lambda x: x.last_used)
            if len(loaded) <= bound or not any(self._evict(x) for x in idle):
                return

    def _evict(self, m: LoadedModel) -> bool:
        """Unload `m` unless a request uses it or the scheduler refuses (holds `_loading`)."""
        with self._lock:  # a request cannot take it between the checks and the unloading
            if m.users or m.engine is None:
                return False
            if self.on_evict is not None and not self.on_evict(m.name):
                return False
            m.engine = None
            m.load_seconds = m.memory_bytes = m.file_bytes = None
        # its sessions are freed when the last reference goes (the translator's step runners
        # refer back to it: a collection), and the heap's freed pages go back to the system
        gc.collect()
        trim_heap()
        if self.metrics is not None:
            self.metrics.model_evictions.labels(m.name).inc()
            self.metrics.models_loaded.dec()
        log.info("unloaded %s (least recently used) to stay within max_loaded_models=%d", m.name, self.max_loaded)
        return True

    def _count_load(self, name: str, outcome: str, seconds: float | None = None) -> None:
        if self.metrics is None:
            return
        self.metrics.model_loads.labels(name, outcome).inc()
        if seconds is not None:
            self.metrics.model_load_seconds.labels(name).observe(seconds)
            self.metrics.models_loaded.inc()


def on_cuda(providers: list[str]) -> bool:
    """Whether sessions made with `providers` (resolve_providers) run on the CUDA provider."""
    return providers[0] == "CUDAExecutionProvider"


def load_registry(settings: Settings) -> Registry:
    """Every bundle of the model directory; with `max_loaded_models` the translation bundles are
    checked (manifest, checksums) but left to load on demand."""
    model_dir = settings.model_dir
    if not model_dir.is_dir():
        raise ModelDirError(f"model directory {model_dir} does not exist")
    bundles = find_bundles(model_dir)
    # folders that look like a bundle (graphs or a tokenizer) but have no manifest: listed as failed
    orphans = sorted(d for d in model_dir.iterdir() if d.is_dir() and d not in bundles and any(d.glob("*.onnx")))
    if not bundles and not orphans:
        raise ModelDirError(f"model directory {model_dir} holds no bundle (no */manifest.json)")
    providers = resolve_providers(settings.provider)
    cuda = on_cuda(providers)
    if settings.retain_freed_mb and not retain_freed_memory(settings.retain_freed_mb):
        log.info("retain_freed_mb: not glibc's malloc here; its defaults stay")
    # decode workers x intra-op threads: the settings' (the cores divided among the workers), or
    # with both left at 0 on a CPU of 2+ cores the faster layout timed here, before the shared
    # pool is fixed (the probe's sessions have pools of their own, closed when it ends)
    layout = probe.choose(settings, cuda)
    threads = layout.threads
    if settings.thread_pool == "shared":
        share_thread_pool(threads)
    registry = Registry(
        cuda=cuda, max_loaded=settings.max_loaded_models, workers=layout.workers, threads=threads, layout=layout
    )
    registry.loader = lambda bundle_dir, manifest: _engine(bundle_dir, manifest, providers, settings, threads)
    for orphan in orphans:
        registry.models[orphan.name] = LoadedModel(orphan.name, None, error="no manifest.json in the bundle folder")
        log.error("refused bundle %s: no manifest.json", orphan)
    for bundle_dir in bundles:
        registry.models[bundle_dir.name] = _check_or_load(registry, bundle_dir, providers, settings, threads)
    return registry


def _check_or_load(
    registry: Registry, bundle_dir: Path, providers: list[str], settings: Settings, threads: int | None
) -> LoadedModel:
    """One bundle: checked (and, unless it loads on demand, loaded), its pairs routed; a bundle
    that cannot be served is returned with its error, its pairs marked failed."""
    name = bundle_dir.name
    loaded = LoadedModel(name=name, manifest=None, bundle_dir=bundle_dir)
    try:
        manifest = loaded.manifest = load_manifest(bundle_dir, verify=True)
        if registry.lazy and manifest.task == "translation":
            loaded.lazy = True  # checked; loaded at its first request
            loaded.file_stats = _file_stats(bundle_dir, manifest)
        else:
            engine, loaded.load_seconds, loaded.memory_bytes = _measured(
                partial(_engine, bundle_dir, manifest, providers, settings, threads)
            )
            loaded.engine, loaded.file_bytes = engine, _onnx_bytes(bundle_dir, engine)
    except Exception as e:  # noqa: BLE001 - one broken bundle must not stop the others
        # BundleError (manifest, checksums), OSError, and onnxruntime's own Fail /
        # InvalidGraph / InvalidProtobuf for a graph it cannot load.
        loaded.error = _error_text(e, bundle_dir, name)
        log.error("refused bundle %s: %s", bundle_dir, e)
        if loaded.manifest is None:  # what it would have served, if its manifest is readable
            try:
                loaded.manifest = load_manifest(bundle_dir, verify=False)
            except BundleError:
                pass
        if loaded.manifest is not None:  # its pairs answer 503 naming it, not "unsupported"
            for pair in loaded.manifest.pairs():
                registry.failed_pairs.setdefault(pair, name)
    else:
        if loaded.engine is not None:
            log.info(
                "loaded %s (%s, variant %s) on %s in %.2fs (%s MB resident)",
                name,
                loaded.manifest.task,
                loaded.engine.variant,
                loaded.engine.provider,
                loaded.load_seconds,
                _mb(loaded.memory_bytes),
            )
        else:
            log.info("checked %s (translation): loaded at its first request", name)
        for pair in loaded.manifest.pairs():
            if pair in registry.pairs:
                log.warning(
                    "%s and %s both translate %s->%s; using %s",
                    registry.pairs[pair],
                    name,
                    *pair,
                    registry.pairs[pair],
                )
            else:
                registry.pairs[pair] = name
    return loaded


def _engine(bundle_dir: Path, manifest: Manifest, providers: list[str], settings: Settings, threads: int | None = None):
    """The engine of one bundle; `threads`: intra-op threads (default: the settings')."""
    threads = settings.intra_threads(on_cuda(providers)) if threads is None else threads
    variant = settings.variant if settings.variant in manifest.variants else None
    if settings.variant and variant is None:
        log.warning(
            "bundle %s has no variant %r (it has %s): serving its default %r",
            manifest.name,
            settings.variant,
            sorted(manifest.variants),
            manifest.default_variant,
        )
    arena = settings.memory_arena
    if manifest.task == "translation":
        engine = Translator(
            bundle_dir,
            manifest,
            providers,
            threads,
            variant,
            memory_arena=arena,
            target_vocab=settings.target_vocab,
            shortlist=settings.shortlist,
        )
        if not settings.loop_guard:
            engine.loop_guard = None
        return engine
    return Classifier(bundle_dir, manifest, providers, threads, variant, memory_arena=arena)


def _error_text(e: Exception, bundle_dir: Path, name: str) -> str:
    """What /ready and /models say of a bundle that failed: the bundle's name, not the build
    machine's absolute path."""
    error = str(e) if isinstance(e, BundleError) else f"{type(e).__name__}: {e}"
    return error.replace(str(bundle_dir.resolve()), name).replace(str(bundle_dir), name)


def _measured(load: Callable[[], Engine]) -> tuple[Engine, float, int | None]:
    """`load()`'s engine, seconds, and the change of the process's resident memory over it (None
    where /proc is not there). Loads run one at a time; decoding elsewhere meanwhile, and memory
    freed before and reused, make the figure approximate (docs/architecture.md)."""
    before, t0 = _resident_bytes(), time.perf_counter()
    engine = load()
    seconds, after = time.perf_counter() - t0, _resident_bytes()
    return engine, round(seconds, 4), (after - before) if before is not None and after is not None else None


def _file_stats(bundle_dir: Path, manifest: Manifest) -> dict[str, tuple[int, int]] | None:
    """Each file's (size, mtime) of `manifest.files`; None when one cannot be read."""
    try:
        return {name: ((st := (bundle_dir / name).stat()).st_size, st.st_mtime_ns) for name in manifest.files}
    except OSError:
        return None


def _resident_bytes() -> int | None:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _onnx_bytes(bundle_dir: Path, engine: Engine) -> int:
    """The sizes of the ONNX files of the variant `engine` serves."""
    graphs = engine.manifest.variants[engine.variant].values()
    return sum((bundle_dir / g.file).stat().st_size for g in graphs if (bundle_dir / g.file).is_file())


def _mb(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**20:.1f}"
