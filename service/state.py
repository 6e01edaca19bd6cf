"""The service's runtime state, hung on ``app.state.service``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter

from service.cache import TranslationCache
from service.metrics import Metrics
from service.middleware import InFlight
from service.registry import Registry
from service.scheduling import Scheduler
from service.security import RateLimiter
from service.settings import Settings


@dataclass
class ServiceState:
    """Everything the routes need, hung on ``app.state.service``."""

    settings: Settings
    metrics: Metrics
    registry: Registry | None = None
    scheduler: Scheduler | None = None  # service/scheduling: continuous, or whole batches
    rate_limiter: RateLimiter | None = None
    files: Any = None  # service/files.Store of translated files, made at the first file translation
    inflight: InFlight = field(default_factory=InFlight)
    loading: bool = True
    started: float = field(default_factory=time.monotonic)
    ready_seconds: float | None = None
    load_error: str | None = None
    # transerve_worker_restarts_total: scheduler worker loops that failed and started again (app.py)
    worker_restarts: Counter | None = None
    # the sentence translation cache (service/cache.py); made from `cache_mb` unless given; None: off
    cache: TranslationCache | None = None

    def __post_init__(self) -> None:
        if self.cache is None and self.settings.cache_mb:
            self.cache = TranslationCache(self.settings.cache_mb * 2**20, self.metrics)

    def info(self) -> dict[str, Any]:
        return {"loading": self.loading, "ready_seconds": self.ready_seconds}
