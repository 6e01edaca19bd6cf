"""The translation pipeline of the service in this process, for the benchmarks that compare it with
and without one of its features (placeholders, glossary terms): one shipped bundle, the cache off
(a sentence's answer without the feature must not answer it with the feature)."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings


@contextmanager
def served(model: Path, threads: int = 1) -> Iterator[TestClient]:
    """A client of an app serving the bundle `model` alone, once it is ready."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / model.name).symlink_to(model.resolve())
        settings = Settings(model_dir=Path(tmp), threads=threads, decode_workers=1, cache_mb=0)
        with TestClient(create_app(settings)) as client:
            while client.get("/ready").status_code != 200:
                time.sleep(0.1)
            yield client
