"""Edges found by an adversarial review (issue: hardening): client identity, key guessing, the
limiter's window and state, content types, response headers."""

from __future__ import annotations

import httpx
import pytest

from service.errors import ServiceError
from service.security import RateLimiter
from tests.server import running_server
from tests.service.conftest import make_client, wait_ready


def test_token_bucket_lets_no_burst_through_a_window_boundary():
    limiter = RateLimiter(30)
    allowed = 0
    for k in range(120):  # 120 requests in 4 seconds, across the minute where a fixed window resets
        try:
            limiter.check("a", now=58.0 + k / 30)
            allowed += 1
        except ServiceError as e:
            assert e.status == 429 and int(e.headers["Retry-After"]) >= 1
    # the bucket, plus at most the 2 tokens refilled in those 4 s (0.5/s); a fixed window: 60
    assert 30 <= allowed <= 32


def test_limiter_state_is_bounded_and_forgets_the_least_recent():
    limiter = RateLimiter(1, max_clients=1000)
    for i in range(5000):
        limiter.check(f"ip:{i}", now=0.0)
    assert len(limiter._buckets) == 1000 and "ip:4999" in limiter._buckets and "ip:0" not in limiter._buckets


def test_wrong_keys_and_bad_bodies_count_against_the_address(model_dir):
    with make_client(model_dir, api_keys=["s3cret"], rate_limit_per_minute=5) as c:
        wait_ready(c)
        codes = [
            c.post("/translate", json={"q": "x", "source": "de", "target": "en"}, headers={"x-api-key": f"guess{i}"})
            for i in range(5)
        ]
        assert [r.status_code for r in codes] == [403] * 5
        r = c.post("/translate", content=b"not json", headers={"content-type": "application/json"})
        assert r.status_code == 429 and "Retry-After" in r.headers


def test_other_content_types_are_415(client):
    r = client.post(
        "/translate", content=b'{"q": "hallo", "source": "de", "target": "en"}', headers={"content-type": "text/plain"}
    )
    assert r.status_code == 415 and r.json() == {
        "error": "unsupported content type 'text/plain'; send application/json or a form"
    }


def test_security_headers_and_the_page_policy(client):
    page = client.get("/")
    assert page.headers["x-content-type-options"] == "nosniff" and page.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert client.get("/health").headers["referrer-policy"] == "no-referrer"


@pytest.mark.parametrize("trusted", [False, True])
def test_forwarded_for_is_used_only_from_trusted_proxies(model_dir, trusted):
    env = {"TRANSERVE_RATE_LIMIT_PER_MINUTE": "3"}
    if trusted:
        env["TRANSERVE_TRUSTED_PROXIES"] = "127.0.0.1"
    with running_server(model_dir, env=env) as server:
        body = {"q": "hallo", "source": "de", "target": "en"}
        codes = [
            httpx.post(f"{server.base}/translate", json=body, headers={"X-Forwarded-For": f"10.0.0.{i}"}).status_code
            for i in range(6)
        ]
        spoof = httpx.post(
            f"{server.base}/translate", json=body, headers={"X-Forwarded-For": "6.6.6.6 admin user=root"}
        )
    if trusted:  # each forwarded address is its own client; a value that is no address is "unknown"
        assert codes == [200] * 6
        assert "admin" not in server.output and "user=root" not in server.output
    else:  # rotating the header changes nothing: the caller is 127.0.0.1
        assert codes == [200, 200, 200, 429, 429, 429] and spoof.status_code == 429
        assert "10.0.0." not in server.output and "6.6.6.6" not in server.output


def test_silent_bodies_hold_no_slot_and_get_408(model_dir):
    import socket
    import time

    env = {"TRANSERVE_MAX_INFLIGHT_REQUESTS": "4", "TRANSERVE_BODY_TIMEOUT_S": "1.5"}
    with running_server(model_dir, env=env) as server:
        port = int(server.base.rsplit(":", 1)[1])
        silent = []
        for _ in range(8):  # twice the cap: headers, then nothing
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(
                b"POST /translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
            )
            silent.append(s)
        time.sleep(0.3)
        t0 = time.monotonic()
        ok = httpx.post(f"{server.base}/translate", json={"q": "hallo", "source": "de", "target": "en"}, timeout=10)
        assert ok.status_code == 200 and time.monotonic() - t0 < 1.0  # not behind the silent ones
        answers = []
        for s in silent:
            s.settimeout(5)
            data = b""
            while chunk := s.recv(4096):  # headers and body may come in separate reads; then close
                data += chunk
            answers.append(data.decode(errors="replace"))
            s.close()
    assert all(a.startswith("HTTP/1.1 408") and "not received within 1.5 s" in a for a in answers), answers[0]


@pytest.mark.parametrize("opened", [False, True])
def test_operational_endpoints_need_the_key_unless_opened(model_dir, opened):
    key = "k-operator-1"
    with make_client(model_dir, api_keys=[key], open_operational_endpoints=opened) as c:
        wait_ready(c)
        for path in ("/metrics", "/models", "/docs", "/openapi.json"):
            r = c.get(path)
            assert r.status_code == (200 if opened else 403), path
            if not opened:
                assert r.json() == {"error": "invalid or missing API key"}
                assert c.get(path, headers={"X-API-Key": key}).status_code == 200
                assert c.get(path, params={"api_key": key}).status_code == 200
        for path in ("/health", "/ready", "/", "/languages", "/frontend/settings", "/spec"):
            assert c.get(path).status_code == 200, path  # probes, the page, LibreTranslate discovery


def test_docs_page_loads_swagger_ui_from_this_server(client):
    page = client.get("/docs").text
    assert "cdn" not in page.lower() and "/docs-assets/swagger-ui-bundle.js" in page
    js = client.get("/docs-assets/swagger-ui-bundle.js")
    assert js.status_code == 200 and len(js.content) > 100_000
    assert client.get("/openapi.json").json()["info"]["title"] == "transerve"


@pytest.mark.parametrize("by", ["sentences", "requests"])
def test_the_rate_limit_counts_sentences(model_dir, by):
    # 10 a minute: a request of 8 sentences leaves 2, so the next one of 4 waits (429);
    # counting requests, both pass
    with make_client(model_dir, rate_limit_per_minute=10, rate_limit_by=by) as c:
        wait_ready(c)
        eight = {"q": " ".join(f"der hund {k} spielt." for k in range(8)), "source": "de", "target": "en"}
        four = {"q": ["der hund.", "die katze.", "ein mann.", "das kind."], "source": "de", "target": "en"}
        assert c.post("/translate", json=eight).status_code == 200
        r = c.post("/translate", json=four)
        if by == "sentences":
            assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        else:
            assert r.status_code == 200
    limiter = RateLimiter(5)
    limiter.check("a", now=0.0, cost=50)  # more than a whole minute's budget: waits for a full bucket
    with pytest.raises(ServiceError):
        limiter.check("a", now=1.0)


def test_cors_headers_on_the_middleware_own_answers_and_the_documented_key_schemes(model_dir):
    origin = "https://x.example"
    with make_client(model_dir, cors_origins=[origin], api_keys=["k1"], max_body_bytes=2048) as c:
        wait_ready(c)
        r = c.post(
            "/translate",
            content=b"{" + b" " * 4000 + b"}",
            headers={"origin": origin, "content-type": "application/json"},
        )
        assert r.status_code == 413 and r.headers["access-control-allow-origin"] == origin
        doc = c.get("/spec").json()
    schemes = doc["components"]["securitySchemes"]
    assert schemes["ApiKeyHeader"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert {"ApiKeyHeader": []} in doc["security"]
    assert doc["info"]["x-limits"]["max_body_bytes"] == 2048
    assert {"408", "429", "431", "503"} <= set(doc["paths"]["/translate"]["post"]["responses"])
