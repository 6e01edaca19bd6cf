"""A real server out of file descriptors (issue 39, finding 1): a `python -m service` process
whose RLIMIT_NOFILE is lowered in the child (made in the test, not on the machine), its
descriptors used up by idle connections from the test. A request into a target language not
used before, sent on a connection accepted earlier, must be answered 200: every decoder session
is opened at load, so nothing reads a file at request time (before: the session was built at
that moment, the read failed with EMFILE, the decode worker died and the request got 504, as
did every later one, with /ready 200). Once the idle connections are gone, every model route
and /ready answer 200."""

from __future__ import annotations

import os
import resource
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import TINY_BUNDLES
from tests.server import Server, free_port, wait_ready

NOFILE = 256  # the server's descriptor limit (soft and hard), far above what it needs to serve
TIMEOUT_S = 4.0  # the server's request timeout: a dead worker shows as 504 after it
VOCAB = {"en": set(range(4, 52)), "de": set(range(28, 80))}  # pieces of the tiny tokenizer (80)


@pytest.fixture
def models(tmp_path) -> Path:
    """The tiny multilingual bundle with target vocabularies (a decoder session per target
    language, the one a first en->de used to open), a langid and a classifier."""
    pytest.importorskip("onnx", reason="writing target vocabularies needs the onnx package (training extras)")
    from training.vocab import write_target_vocab

    root = tmp_path / "models"
    shutil.copytree(TINY_BUNDLES / "multilingual", root)
    write_target_vocab(root / "multi", VOCAB)
    for name in ("langid", "sentiment"):
        shutil.copytree(TINY_BUNDLES / "models" / name, root / name)
    return root


def _lower_nofile() -> None:  # runs in the child between fork and exec
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


@pytest.fixture
def server(models):
    port = free_port()
    cmd = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--model-dir", str(models), "--threads", "1"]
    env = {**os.environ, "TRANSERVE_REQUEST_TIMEOUT_S": str(TIMEOUT_S), "TRANSERVE_MAX_WAIT_MS": "0"}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, preexec_fn=_lower_nofile
    )
    s = Server(proc, f"http://127.0.0.1:{port}")
    reader = threading.Thread(target=lambda: s.lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        wait_ready(s, 60)
        yield s
    finally:
        proc.kill()
        proc.wait(timeout=30)
        reader.join(timeout=30)
        proc.stdout.close()


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def exhaust(server: Server) -> list[socket.socket]:
    """Idle connections until the server holds NOFILE descriptors (the ones past that wait in
    the listen backlog, as an attacker's would)."""
    port = int(server.base.rsplit(":", 1)[1])
    idle: list[socket.socket] = []
    deadline = time.monotonic() + 5
    while open_fds(server.proc.pid) < NOFILE and time.monotonic() < deadline:
        for _ in range(NOFILE - open_fds(server.proc.pid) + 8):
            idle.append(socket.create_connection(("127.0.0.1", port)))
        time.sleep(0.1)  # the server accepts what it can
    return idle


def test_a_new_target_language_is_served_with_no_descriptor_left(server):
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] > 2 * NOFILE  # the test's own limit is not lowered
    with open(f"/proc/{server.proc.pid}/limits") as f:
        assert any(line.startswith("Max open files") and f" {NOFILE} " in line for line in f)
    with httpx.Client(base_url=server.base, timeout=2 * TIMEOUT_S, limits=httpx.Limits(max_connections=1)) as kept:
        r = kept.post("/translate", json={"q": "der hund spielt", "source": "de", "target": "en"})
        assert r.status_code == 200, r.text  # the kept connection, and target en used once

        idle = exhaust(server)
        try:
            assert open_fds(server.proc.pid) == NOFILE  # not one descriptor left
            started = time.monotonic()
            r = kept.post("/translate", json={"q": "hello world", "source": "en", "target": "de"})
            assert r.status_code == 200 and r.json()["translatedText"], r.text
            assert time.monotonic() - started < TIMEOUT_S / 2
        finally:
            for sock in idle:
                sock.close()

    # the idle connections gone (the server accepts the queued ones, reads their end, frees them)
    deadline = time.monotonic() + 5
    while open_fds(server.proc.pid) > NOFILE // 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    with httpx.Client(base_url=server.base, timeout=2 * TIMEOUT_S) as c:
        for source, target in (("de", "en"), ("en", "de"), ("fr", "en")):
            r = c.post("/translate", json={"q": "hallo welt", "source": source, "target": target})
            assert r.status_code == 200, (source, target, r.text)
        assert c.post("/detect", json={"q": "der hund spielt"}).status_code == 200
        r = c.post("/classify", json={"text": ["the movie was great"], "model": "sentiment"})
        assert r.status_code == 200, r.text
        assert c.get("/ready").status_code == 200
