"""ASGI middleware, in front of everything:

* a cap on model requests in flight: beyond it, 503 + Retry-After before anything is read;
* the request body size limit, enforced before any parsing (413);
* request metrics, and one access-log line per request (method, path, status, milliseconds,
  client address: never a header, a query string or a body, so API keys cannot reach the log);
* the last word on an unexpected exception: 500 `{"error": "internal error", "request_id": ...}`
  with `Connection: close` and the security headers, counted and logged like any other answer
  (the traceback in the service log under the same id). Inside this layer a route's own errors
  have their handlers; anything else would otherwise reach Starlette's outermost error layer,
  past the metrics, the log and the headers, and uvicorn would drop the connection after it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
import uuid
from collections.abc import Sequence

from service.metrics import Metrics
from service.scheduling import arrived

access_log = logging.getLogger("service.access")
log = logging.getLogger("service")


class InFlight:
    """How many model requests the server is handling now (read by the batcher's thread)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> int:
        return self.count


class BodyLimitAndMetrics:
    def __init__(
        self,
        app,
        max_body_bytes: int,
        metrics: Metrics,
        log_requests: bool = True,
        max_inflight: int = 0,
        inflight: InFlight | None = None,
        body_timeout_s: float = 10.0,
    ) -> None:
        self.app, self.max_body_bytes, self.metrics = app, max_body_bytes, metrics
        self.log_requests = log_requests
        self.max_inflight = max_inflight  # 0 = no cap
        self.inflight = inflight or InFlight()
        self.body_timeout_s = body_timeout_s

    async def _model_request(self, scope, receive, send, status: dict) -> None:
        """A model request takes an in-flight slot only once its whole body is here: a client
        that sends headers and then nothing (or crawls) holds no slot, and gets 408 at the
        deadline. Then the cap: beyond it, 503 + Retry-After."""
        try:
            body = await asyncio.wait_for(_read_body(receive, self.max_body_bytes), self.body_timeout_s)
        except _BodyTooLarge:
            await _reject(send, self.max_body_bytes)
            return
        except TimeoutError:
            self.metrics.rejected.labels("body_timeout").inc()
            error = {"error": f"request body not received within {self.body_timeout_s:g} s"}
            await _reply(send, 408, error, [(b"connection", b"close")])
            return
        except _Disconnected:
            access_log.info("client left before sending its body: %s %s", scope["method"], scope["path"])
            return
        if self.max_inflight and self.inflight.count >= self.max_inflight:
            self.metrics.rejected.labels("inflight").inc()
            await _reply(send, 503, {"error": "server busy, retry later"}, [(b"retry-after", b"1")])
            return
        replayed = False
        left = asyncio.Event()

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            await left.wait()  # after the body there is only the disconnect, which the watcher reads
            return {"type": "http.disconnect"}

        answered = False

        async def tracked_send(message):
            nonlocal answered
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                answered = True  # from here on the server reports the end of the answer as a disconnect
            await send(message)

        self.inflight.count += 1
        arrived.set(time.monotonic())  # the handler's task copies this context: its passes queue in this order
        handler = asyncio.ensure_future(self.app(scope, replay, tracked_send))
        # With the whole body read, the server's next message is the client leaving (or the end of
        # our answer). A client that leaves first gets its handler cancelled: the scheduler drops
        # its queued and running sentences at the next decoder step (scheduler.py).
        watcher = asyncio.ensure_future(receive())
        try:
            await asyncio.wait({handler, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if not handler.done() and not answered:
                left.set()
                handler.cancel()
                self.metrics.client_left.inc()
                access_log.info("client left before its answer: %s %s", scope["method"], scope["path"])
            try:
                await handler
            except asyncio.CancelledError:
                if not left.is_set():
                    raise  # the server itself is cancelling us
                status["code"] = 499  # nginx's "client closed request", for the log and the metrics
        finally:
            watcher.cancel()
            if not handler.done():
                handler.cancel()
            self.inflight.count -= 1

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint = scope["path"] if scope["path"] in _KNOWN else "other"
        start = time.perf_counter()
        status = {"code": 500}
        started = False

        page = scope["path"] == "/"

        async def send_wrapper(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                status["code"] = message["status"]
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
                if page:
                    message["headers"].append((b"content-security-policy", PAGE_CSP))
            await send(message)

        try:
            declared = dict(scope.get("headers") or []).get(b"content-length")
            too_big = declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes
            if too_big:
                await _reject(send_wrapper, self.max_body_bytes)
            elif endpoint in _MODEL_ENDPOINTS:
                await self._model_request(scope, receive, send_wrapper, status)
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
        except Exception as exc:
            status["code"] = 500
            request_id = uuid.uuid4().hex[:12]
            log.error("request %s %s failed (request_id=%s)", scope["method"], scope["path"], request_id, exc_info=exc)
            if started:  # part of an answer is out: only dropping the connection tells the client
                self._count(scope, endpoint, 500, time.perf_counter() - start)
                raise
            error = {"error": "internal error", "request_id": request_id}
            await _reply(send_wrapper, 500, error, [(b"connection", b"close")])
        self._count(scope, endpoint, status["code"], time.perf_counter() - start)

    def _count(self, scope, endpoint: str, code: int, seconds: float) -> None:
        """The request in the metrics and (probes aside) the access log."""
        self.metrics.requests.labels(endpoint, str(code)).inc()
        self.metrics.latency.labels(endpoint).observe(seconds)
        if self.log_requests and endpoint not in ("/health", "/ready", "/metrics"):  # not the probes
            client = _ip((scope.get("client") or ("-", 0))[0])
            access_log.info("%s %s %d %.1fms %s", scope["method"], endpoint, code, seconds * 1000, client)


SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
# The page's own inline script and style, its API calls to this origin; nothing else.
PAGE_CSP = (
    b"default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
    b"img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


def _ip(host: str) -> str:
    """Only an IP address reaches the log (a forwarded header could carry any text)."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return "unknown"


_KNOWN = {
    "/translate",
    "/translate_file",
    "/detect",
    "/classify",
    "/languages",
    "/models",
    "/health",
    "/ready",
    "/metrics",
    "/",
}
_MODEL_ENDPOINTS = {"/translate", "/translate_file", "/detect", "/classify"}  # capped and counted; probes always answer


class _BodyTooLarge(Exception):
    pass


class _Disconnected(Exception):
    pass


async def _read_body(receive, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge()
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _reject(send, limit: int) -> None:
    await _reply(send, 413, {"error": f"request body larger than {limit} bytes"})


async def _reply(send, status: int, payload: dict, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
