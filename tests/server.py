"""A real `python -m service` process on a free loopback port, for tests that need uvicorn,
signals, a browser or the process's own log output."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
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
    lines: list[str] = field(default_factory=list)  # what it printed so far


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
    # Read the log as it comes: a pipe nobody reads fills up (64 KB), and then the server's
    # next log line blocks its event loop (a burst of 1024 requests writes more than that).
    reader = threading.Thread(target=lambda: server.lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        wait_ready(server, ready_timeout)
        yield server
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        reader.join(timeout=30)
        proc.stdout.close()
        server.output = "".join(server.lines)


def wait_ready(server: Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            time.sleep(0.2)  # the reader's last lines
            raise AssertionError(f"server exited with {server.proc.returncode}: {''.join(server.lines)}")
        try:
            if httpx.get(f"{server.base}/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("server did not become ready")
