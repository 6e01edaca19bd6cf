"""A real `python -m service` process on a free loopback port, for tests that need uvicorn,
signals, a browser or the process's own log output."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen
    base: str
    output: str = ""  # everything the process printed, filled in when it has stopped


@contextmanager
def running_server(model_dir: Path, *args: str, env: dict[str, str] | None = None, ready_timeout: float = 60):
    """Start the service, wait for /ready, yield it; kill it at the end if it still runs.
    `server.output` holds its whole log once the block has left."""
    port = free_port()
    cmd = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--model-dir", str(model_dir), "--threads", "1", *args]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )
    server = Server(proc, f"http://127.0.0.1:{port}")
    try:
        wait_ready(server, ready_timeout)
        yield server
    finally:
        if proc.poll() is None:
            proc.kill()
        server.output, _ = proc.communicate(timeout=30)


def wait_ready(server: Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise AssertionError(f"server exited with {server.proc.returncode}: {server.proc.stdout.read()}")
        try:
            if httpx.get(f"{server.base}/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("server did not become ready")
