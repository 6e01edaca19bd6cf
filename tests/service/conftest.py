from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings


def wait_ready(client: TestClient, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = client.get("/ready")
        if r.status_code == 200 or r.json().get("status") != "loading":
            return r.json()
        time.sleep(0.02)
    raise TimeoutError("service not ready")


def make_client(model_dir: Path, **overrides) -> TestClient:
    # In-process apps keep a pool per session: the shared pool is a one-time, process-wide choice
    # that the training tests in this process (whose quantizers make their own sessions) cannot share.
    settings = Settings(model_dir=model_dir, threads=1, **{"thread_pool": "per-session", **overrides})
    return TestClient(create_app(settings))


@pytest.fixture(scope="module")
def client(model_dir) -> Iterator[TestClient]:
    with make_client(model_dir) as c:
        wait_ready(c)
        yield c
