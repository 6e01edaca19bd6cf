"""Loads every bundle of the model directory; a bad bundle is refused and reported, the rest serve."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from service.runtime.bundle import BundleError, Manifest, find_bundles, load_manifest
from service.runtime.classifier import Classifier
from service.runtime.sessions import resolve_providers, retain_freed_memory, share_thread_pool
from service.runtime.translator import Translator
from service.settings import Settings

log = logging.getLogger(__name__)

PIVOT = "en"  # the language pairs without a direct model are translated through


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
    engine: Translator | Classifier | None = None
    error: str | None = None

    @property
    def ready(self) -> bool:
        return self.engine is not None


@dataclass
class Registry:
    models: dict[str, LoadedModel] = field(default_factory=dict)
    # (source, target) -> translation model name
    pairs: dict[tuple[str, str], str] = field(default_factory=dict)
    # pairs whose only bundle failed to load -> that bundle
    failed_pairs: dict[tuple[str, str], str] = field(default_factory=dict)
    cuda: bool = False  # the sessions run on the CUDA provider

    def tasks_missing(self) -> list[str]:
        """Tasks that some bundle serves (by its manifest) but no loaded model does."""
        wanted = {m.manifest.task for m in self.models.values() if m.manifest is not None}
        served = {m.manifest.task for m in self.models.values() if m.ready and m.manifest is not None}
        return sorted(wanted - served)

    def translators(self) -> dict[str, Translator]:
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
        """Every language a source can reach, directly or through English."""
        langs = {lang for pair in self.pairs for lang in pair}
        return {s: {t for t in langs if t != s and self.route(s, t)} for s in langs}

    def classifiers(self) -> dict[str, Classifier]:
        return {n: m.engine for n, m in self.models.items() if isinstance(m.engine, Classifier)}


def on_cuda(providers: list[str]) -> bool:
    """Whether sessions made with `providers` (resolve_providers) run on the CUDA provider."""
    return providers[0] == "CUDAExecutionProvider"


def load_registry(settings: Settings) -> Registry:
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
    threads = settings.intra_threads(cuda)  # the cores divided among the decode workers
    if settings.thread_pool == "shared":
        share_thread_pool(threads)
    if settings.retain_freed_mb and not retain_freed_memory(settings.retain_freed_mb):
        log.info("retain_freed_mb: not glibc's malloc here; its defaults stay")
    registry = Registry(cuda=cuda)
    for orphan in orphans:
        registry.models[orphan.name] = LoadedModel(orphan.name, None, error="no manifest.json in the bundle folder")
        log.error("refused bundle %s: no manifest.json", orphan)
    for bundle_dir in bundles:
        name = bundle_dir.name
        loaded = LoadedModel(name=name, manifest=None)
        try:
            loaded.manifest = load_manifest(bundle_dir, verify=True)
            loaded.engine = _engine(bundle_dir, loaded.manifest, providers, settings, threads)
        except Exception as e:  # noqa: BLE001 - one broken bundle must not stop the others
            # BundleError (manifest, checksums), OSError, and onnxruntime's own Fail /
            # InvalidGraph / InvalidProtobuf for a graph it cannot load.
            error = str(e) if isinstance(e, BundleError) else f"{type(e).__name__}: {e}"
            # the bundle's name, not the build machine's absolute path, goes into /ready and /models
            loaded.error = error.replace(str(bundle_dir.resolve()), name).replace(str(bundle_dir), name)
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
            log.info(
                "loaded %s (%s, variant %s) on %s",
                name,
                loaded.manifest.task,
                loaded.engine.variant,
                loaded.engine.provider,
            )
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
        registry.models[name] = loaded
    return registry


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
        return Translator(
            bundle_dir,
            manifest,
            providers,
            threads,
            variant,
            memory_arena=arena,
            target_vocab=settings.target_vocab,
        )
    return Classifier(bundle_dir, manifest, providers, threads, variant, memory_arena=arena)
