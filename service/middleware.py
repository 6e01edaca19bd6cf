"""ASGI middleware: request body size limit (before any parsing), request metrics and one
access-log line per request (method, path, status, milliseconds, client address: never a
header, a query string or a body, so API keys cannot reach the log)."""

from __future__ import annotations

import json
import logging
import time

from service.metrics import Metrics

access_log = logging.getLogger("service.access")


class BodyLimitAndMetrics:
    def __init__(self, app, max_body_bytes: int, metrics: Metrics, log_requests: bool = True) -> None:
        self.app, self.max_body_bytes, self.metrics = app, max_body_bytes, metrics
        self.log_requests = log_requests

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint = scope["path"] if scope["path"] in _KNOWN else "other"
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_big = declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes
        if too_big:
            await _reject(send_wrapper, self.max_body_bytes)
        else:
            received = 0

            async def limited_receive():
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > self.max_body_bytes:
                        raise _BodyTooLarge()
                return message

            try:
                await self.app(scope, limited_receive, send_wrapper)
            except _BodyTooLarge:
                await _reject(send_wrapper, self.max_body_bytes)
        seconds = time.perf_counter() - start
        self.metrics.requests.labels(endpoint, str(status["code"])).inc()
        self.metrics.latency.labels(endpoint).observe(seconds)
        if self.log_requests and endpoint not in ("/health", "/ready", "/metrics"):  # not the probes
            client = scope.get("client") or ("-", 0)
            access_log.info("%s %s %d %.1fms %s", scope["method"], endpoint, status["code"], seconds * 1000, client[0])


_KNOWN = {"/translate", "/detect", "/classify", "/languages", "/models", "/health", "/ready", "/metrics", "/"}


class _BodyTooLarge(Exception):
    pass


async def _reject(send, limit: int) -> None:
    body = json.dumps({"error": f"request body larger than {limit} bytes"}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
