"""Prometheus metrics, on a registry per app (tests build many apps in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "transerve_requests_total", "HTTP requests", ["endpoint", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "transerve_request_seconds",
            "HTTP request latency",
            ["endpoint"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "transerve_batch_size",
            "texts per model call",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "transerve_batch_seconds", "model call duration", ["model"], registry=self.registry
        )
        self.queue_depth = Gauge("transerve_queue_depth", "texts waiting for a batch", registry=self.registry)
        self.tokens = Counter(
            "transerve_generated_tokens_total", "target tokens generated", ["model"], registry=self.registry
        )
        self.schedule = Histogram(
            "transerve_schedule_seconds",
            "where a continuously decoded request's time went: queue (until its first sentence joined a running "
            "batch), admission (until its last one did), decode (until its last one finished)",
            ["stage", "size"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.dropped = Counter(
            "transerve_dropped_sentences_total",
            "sentences not decoded (or not to the end) because their request was abandoned (deadline, client left)",
            ["model", "where"],
            registry=self.registry,
        )
        self.client_left = Counter(
            "transerve_client_disconnects_total",
            "model requests whose client left before the answer",
            registry=self.registry,
        )
        self.rejected = Counter(
            "transerve_rejected_total",
            "requests refused for overload or rate limit",
            ["reason"],
            registry=self.registry,
        )

        self._models()
        self._cache()

    def _models(self) -> None:
        """Bundles loaded (at start-up, or on demand with max_loaded_models) and evicted (service/registry.py)."""
        self.model_loads = Counter(
            "transerve_model_loads_total",
            "bundles loaded (at start-up, or at a request's demand with TRANSERVE_MAX_LOADED_MODELS), by outcome",
            ["model", "outcome"],
            registry=self.registry,
        )
        self.model_load_seconds = Histogram(
            "transerve_model_load_seconds",
            "time to load a bundle (checksums, sessions, target vocabularies)",
            ["model"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.model_evictions = Counter(
            "transerve_model_evictions_total",
            "translation engines unloaded, least recently used first, to stay within TRANSERVE_MAX_LOADED_MODELS",
            ["model"],
            registry=self.registry,
        )
        self.models_loaded = Gauge(
            "transerve_models_loaded",
            "bundles whose engines are loaded now (classifiers included)",
            registry=self.registry,
        )

    def _cache(self) -> None:
        """The sentence translation cache (service/cache.py, TRANSERVE_CACHE_MB)."""
        self.cache_hits = Counter(
            "transerve_cache_hits_total",
            "answered from the translation cache, by kind: sentence (or a repeat of it in the same request), "
            "alignment (an HTML block's word alignment with its translation)",
            ["kind"],
            registry=self.registry,
        )
        self.cache_misses = Counter(
            "transerve_cache_misses_total",
            "looked up in the translation cache and not found (decoded), by kind: sentence, alignment",
            ["kind"],
            registry=self.registry,
        )
        self.cache_evictions = Counter(
            "transerve_cache_evictions_total",
            "translation cache entries evicted, least recently used first, to stay within TRANSERVE_CACHE_MB",
            registry=self.registry,
        )
        self.cache_bytes = Gauge(
            "transerve_cache_bytes", "bytes held by the translation cache (estimated)", registry=self.registry
        )
        self.cache_entries = Gauge(
            "transerve_cache_entries", "sentences and alignments in the translation cache", registry=self.registry
        )

    def scheduled(self, model: str, sentences: int, queue: float, admission: float, decode: float) -> None:
        size = "1" if sentences == 1 else "2-4" if sentences <= 4 else "5-16" if sentences <= 16 else "17+"
        for stage, seconds in (("queue", queue), ("admission", admission), ("decode", decode)):
            self.schedule.labels(stage, size).observe(max(seconds, 0.0))
