"""The HTTP layer's own bounds (service/http.py) on a real server process: a request head larger
than the limit gets 431, a head that does not arrive in time 408, an address past its connection
bound 429; bodies are not heads, and a request within the bounds is served."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from tests.server import running_server

ENV = {
    "TRANSERVE_MAX_HEADER_BYTES": "8192",
    "TRANSERVE_HEADER_TIMEOUT_S": "1",
    "TRANSERVE_MAX_CONNECTIONS_PER_CLIENT": "4",
}


@pytest.fixture(scope="module")
def server(model_dir):
    with running_server(model_dir, env=ENV) as s:
        yield s


def _address(server) -> tuple[str, int]:
    host, port = server.base.removeprefix("http://").split(":")
    return host, int(port)


def _answer(sock: socket.socket, timeout: float = 5.0) -> tuple[int, dict]:
    """Read until the server closes: the status and the JSON body."""
    sock.settimeout(timeout)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_a_request_head_past_the_bound_gets_431(server):
    with socket.create_connection(_address(server)) as s:
        s.sendall(b"POST /translate HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 20000 + b"\r\n\r\n")
        status, body = _answer(s)
    assert status == 431 and body == {"error": "request head larger than 8192 bytes"}


def test_a_head_that_does_not_arrive_in_time_gets_408(server):
    with socket.create_connection(_address(server)) as s:
        s.sendall(b"POST /translate HTTP/1.1\r\nHost: x\r\n")  # and nothing more
        t0 = time.monotonic()
        status, body = _answer(s)
        waited = time.monotonic() - t0
    assert status == 408 and body == {"error": "request head not received within 1 s"}
    assert 0.8 < waited < 4


def test_bodies_are_not_heads_and_requests_within_the_bounds_are_served(server):
    text = "der hund spielt im park. " * 1500  # a ~37 KB body, well past the head bound
    r = httpx.post(
        server.base + "/translate",
        json={"q": text[:4000], "source": "de", "target": "en", "pad": text},
        headers={"X-Pad": "b" * 4000},
        timeout=60,
    )
    assert r.status_code == 200 and r.json()["translatedText"]


def test_an_address_past_its_connection_bound_gets_429(server):
    held = [socket.create_connection(_address(server)) for _ in range(4)]
    try:
        time.sleep(0.2)
        with socket.create_connection(_address(server)) as fifth:
            status, body = _answer(fifth)
        assert status == 429 and "more than 4 connections" in body["error"]
    finally:
        for s in held:
            s.close()
    time.sleep(0.2)
    assert httpx.get(server.base + "/health", timeout=5).status_code == 200  # free again once they close
