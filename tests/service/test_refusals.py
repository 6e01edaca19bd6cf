"""Refusals that cost or bound the caller: every wrong key on any route takes a token of the
caller's rate limit (the same limiter as /translate), and past the per-address connection bound
a real server answers the request head with a readable 429 (never a reset), while the default
bound admits a NAT'ed office of browsers."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from tests.server import running_server
from tests.service.conftest import make_client, wait_ready


@pytest.mark.parametrize("route", ["/metrics", "/models", "/translate_file"])
def test_wrong_keys_on_any_route_reach_429(model_dir, route):
    with make_client(model_dir, api_keys=["s3cret"], rate_limit_per_minute=5) as c:
        wait_ready(c)
        codes = []
        for i in range(8):
            headers = {"X-API-Key": f"guess-{i}"}
            if route == "/translate_file":
                r = c.post(
                    route, headers=headers, data={"source": "de", "target": "en"}, files={"file": ("a.txt", b"x")}
                )
            else:
                r = c.get(route, headers=headers)
            codes.append(r.status_code)
        assert codes == [403] * 5 + [429] * 3
        assert int(r.headers["retry-after"]) >= 1 and r.json() == {"error": "rate limit exceeded"}
        # the address's budget is spent for /translate too: one limiter
        r = c.post("/translate", json={"q": "x", "source": "de", "target": "en"}, headers={"X-API-Key": "s3cret"})
        assert r.status_code == 200  # a valid key is its own identity


BOUND = 8


@pytest.fixture(scope="module")
def bounded(model_dir):
    with running_server(model_dir, env={"TRANSERVE_MAX_CONNECTIONS_PER_CLIENT": str(BOUND)}) as s:
        host, port = s.base.removeprefix("http://").split(":")
        s.address = (host, int(port))  # type: ignore[attr-defined]
        yield s


async def _post_in_two_writes(address) -> str:
    """A client as most send a body: the head, then the body in pieces; then it reads the answer.
    Its first line, or the error it met."""
    try:
        reader, writer = await asyncio.open_connection(*address)
    except OSError as e:
        return f"connect: {type(e).__name__}"
    try:
        await asyncio.sleep(0.2)  # the server has accepted it meanwhile
        writer.write(
            b"POST /translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 32768\r\n\r\n"
        )
        await writer.drain()
        await asyncio.sleep(0.2)
        for _ in range(8):
            writer.write(b" " * 4096)
            await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
        head = answer.partition(b"\r\n\r\n")[0].decode().lower()
        assert "retry-after: 1" in head and "connection: close" in head, head
        return head.splitlines()[0]
    except OSError as e:
        return type(e).__name__
    finally:
        writer.close()


def test_a_burst_past_the_bound_gets_readable_429s_never_resets(bounded):
    held = [socket.create_connection(bounded.address) for _ in range(BOUND)]
    try:
        time.sleep(0.2)

        async def burst():
            return await asyncio.gather(*(_post_in_two_writes(bounded.address) for _ in range(40)))

        answers = asyncio.run(burst())
    finally:
        for s in held:
            s.close()
    assert answers == ["http/1.1 429 too many requests"] * 40, sorted(set(answers))


def test_the_429_comes_after_the_request_head_not_before(bounded):
    held = [socket.create_connection(bounded.address) for _ in range(BOUND)]
    try:
        with socket.create_connection(bounded.address) as extra:
            extra.settimeout(0.5)
            with pytest.raises(TimeoutError):  # nothing is sent before the client has spoken
                extra.recv(1)
            extra.settimeout(5)
            extra.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while chunk := extra.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 429") and b"more than 8 connections from one address" in answer
    finally:
        for s in held:
            s.close()


def test_the_default_bound_admits_a_natted_office(model_dir):
    """50 browsers behind one address, 6 connections each, all open at once."""
    with running_server(model_dir) as s:
        host, port = s.base.removeprefix("http://").split(":")

        async def browser_connection(opened: asyncio.Event, count: list[int]):
            reader, writer = await asyncio.open_connection(host, int(port))
            count.append(1)
            if len(count) == 300:
                opened.set()
            await opened.wait()  # every connection open before any request
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            writer.close()
            return head.split(b"\r\n")[0].decode()

        async def office():
            opened, count = asyncio.Event(), []
            return await asyncio.gather(*(browser_connection(opened, count) for _ in range(300)))

        assert asyncio.run(office()) == ["HTTP/1.1 200 OK"] * 300
