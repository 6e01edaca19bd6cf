"""The real server process: `python -m service` serves, and SIGTERM drains in-flight work, exit 0."""

from __future__ import annotations

import signal
import threading
import time

import httpx

from tests.server import running_server


def test_sigterm_finishes_in_flight_requests_and_exits_zero(model_dir):
    with running_server(model_dir) as server:
        results: list[httpx.Response] = []
        body = {"q": [f"der hund spielt mit der katze {i}." * 3 for i in range(40)], "source": "de", "target": "en"}
        threads = [
            threading.Thread(
                target=lambda: results.append(httpx.post(f"{server.base}/translate", json=body, timeout=60))
            )
            for _ in range(4)
        ]
        for t in threads:
            t.start()
        time.sleep(0.3)  # the requests are in flight
        server.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(60)
        assert server.proc.wait(60) == 0
        assert [r.status_code for r in results] == [200] * 4
        assert all(len(r.json()["translatedText"]) == 40 for r in results)
    assert "Traceback" not in server.output, server.output
    assert "Finished server process" in server.output


def test_logs_never_contain_the_api_key(model_dir):
    key = "sk-test-7f3a9c1e5b2d4680"
    env = {"TRANSERVE_API_KEYS": key}
    with running_server(model_dir, env=env) as server:
        ok = httpx.post(
            f"{server.base}/translate",
            json={"q": "der hund", "source": "de", "target": "en"},
            headers={"X-API-Key": key},
        )
        assert ok.status_code == 200
        bearer = httpx.post(f"{server.base}/detect", json={"q": "der hund"}, headers={"Authorization": f"Bearer {key}"})
        assert bearer.status_code == 200
        in_body = httpx.post(
            f"{server.base}/translate", json={"q": "x", "source": "de", "target": "en", "api_key": key}
        )
        assert in_body.status_code == 200
        wrong = httpx.post(
            f"{server.base}/translate",
            json={"q": "der hund", "source": "de", "target": "en"},
            headers={"X-API-Key": key + "-wrong"},
        )
        assert wrong.status_code == 403
        assert key not in wrong.text
        metrics = httpx.get(f"{server.base}/metrics").text
        assert key not in metrics
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(30)
    assert "POST /translate 200" in server.output and "POST /translate 403" in server.output  # requests are logged
    assert key not in server.output


def _threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Threads:"))


def test_thread_pool_setting_shares_one_pool_across_sessions(model_dir):
    # Six sessions (two translators, two classifiers) with 2 threads each: per session, every
    # session owns a worker thread; shared, one worker serves them all. Same translations.
    counts, answers = {}, {}
    for pool in ("per-session", "shared"):
        env = {"TRANSERVE_THREAD_POOL": pool, "TRANSERVE_DECODE_WORKERS": "1"}  # 2 threads a call
        with running_server(model_dir, "--threads", "2", env=env) as server:
            r = httpx.post(f"{server.base}/translate", json={"q": "der hund", "source": "de", "target": "en"})
            assert r.status_code == 200, r.text
            answers[pool] = r.json()["translatedText"]
            counts[pool] = _threads(server.proc.pid)
    assert answers["shared"] == answers["per-session"]
    assert counts["per-session"] - counts["shared"] >= 4, counts


def test_sigterm_under_heavy_load_exits_within_the_shutdown_bound_and_answers_everyone(model_dir):
    # one sentence at a time: 12 requests of ~100 sentences take far longer than the 1.5 s bound
    env = {"TRANSERVE_SHUTDOWN_TIMEOUT_S": "1.5", "TRANSERVE_MAX_BATCH_SIZE": "1"}
    text = " ".join(f"der hund spielt mit der katze im park nummer {i}." for i in range(100))
    with running_server(model_dir, env=env) as server:
        results: list = []

        def post() -> None:
            try:
                results.append(
                    httpx.post(f"{server.base}/translate", json={"q": text, "source": "de", "target": "en"}, timeout=60)
                )
            except httpx.TransportError as exc:  # no answer at all
                results.append(exc)

        threads = [threading.Thread(target=post) for _ in range(12)]
        for t in threads:
            t.start()
        time.sleep(1.5)  # every request read and queued (a request still unread when the listener closes is reset)
        t0 = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(30)
        exited = time.monotonic() - t0
        for t in threads:
            t.join(30)
    assert code == 0 and exited < 1.5 + 5, exited
    assert all(isinstance(r, httpx.Response) for r in results), results  # everyone got an answer
    statuses = sorted(r.status_code for r in results)
    assert set(statuses) <= {200, 503} and 503 in statuses, statuses
    refused = [r for r in results if r.status_code == 503]
    assert all(r.json() == {"error": "server shutting down, retry later"} and r.headers["retry-after"] for r in refused)


def test_the_kubernetes_grace_period_outlasts_the_service_shutdown_bound():
    import re
    from pathlib import Path

    from service.settings import Settings

    manifest = (Path(__file__).resolve().parents[2] / "deploy/kubernetes/deployment.yaml").read_text()
    grace = int(re.search(r"terminationGracePeriodSeconds:\s*(\d+)", manifest).group(1))
    assert grace > Settings().shutdown_timeout_s + 5
