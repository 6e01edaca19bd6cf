"""The real server process: `python -m service` serves, and SIGTERM drains in-flight work, exit 0."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_finishes_in_flight_requests_and_exits_zero(model_dir):
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "service",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--model-dir",
            str(model_dir),
            "--threads",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            raise AssertionError("server did not become ready")

        results: list[httpx.Response] = []
        body = {"q": [f"der hund spielt mit der katze {i}." * 3 for i in range(40)], "source": "de", "target": "en"}
        threads = [
            threading.Thread(target=lambda: results.append(httpx.post(f"{base}/translate", json=body, timeout=60)))
            for _ in range(4)
        ]
        for t in threads:
            t.start()
        time.sleep(0.3)  # the requests are in flight
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(60)
        assert proc.wait(60) == 0
        assert [r.status_code for r in results] == [200] * 4
        assert all(len(r.json()["translatedText"]) == 40 for r in results)
    finally:
        if proc.poll() is None:
            proc.kill()
        output, _ = proc.communicate(timeout=30)
    assert "Traceback" not in output, output
    assert "Finished server process" in output
