"""API keys (constant-time comparison) and a per-client rate limit."""

from __future__ import annotations

import hmac
import ipaddress
import math
import threading
import time
from collections import OrderedDict

from fastapi import Request

from service.errors import ServiceError
from service.settings import Settings


def client_key(request: Request, body_key: str | None) -> str | None:
    """The API key a request carries: X-API-Key header, Bearer token, or the body's api_key."""
    header = request.headers.get("x-api-key")
    if header:
        return header
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return body_key


def authorize(request: Request, settings: Settings, body_key: str | None) -> str:
    """Check the API key if keys are configured; return the identity to rate-limit by."""
    key = client_key(request, body_key)
    if settings.api_keys:
        # compare_digest against every key, so timing does not tell which prefix matched
        valid = False
        for accepted in settings.api_keys:
            # surrogatepass: a key sent as "\ud800" is just a wrong key, not an encoding error
            given = key.encode("utf-8", "surrogatepass") if key is not None else None
            valid |= given is not None and hmac.compare_digest(given, accepted.encode())
        if not valid:
            raise ServiceError(403, "invalid or missing API key")
        return "key:" + key.encode("utf-8", "surrogatepass").hex()  # type: ignore[union-attr]
    return "ip:" + client_address(request)


def client_address(request: Request) -> str:
    """The caller's IP address (a trusted proxy's X-Forwarded-For is applied by uvicorn, see
    TRANSERVE_TRUSTED_PROXIES); anything that is not an IP address is "unknown"."""
    host = request.client.host if request.client else ""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return "unknown"


class RateLimiter:
    """A token bucket per identity: `per_minute` tokens, refilled continuously, one per request
    (a fixed window would let twice the limit through across a minute boundary). Over the limit:
    429 with Retry-After (seconds until one token is back). State is bounded: the least recently
    seen identities are forgotten first (a full bucket needs no memory), in O(1) per request."""

    def __init__(self, per_minute: int, max_clients: int = 100_000) -> None:
        self.per_minute = per_minute
        self.rate = per_minute / 60.0  # tokens per second
        self.max_clients = max_clients
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # identity -> (tokens, time)

    def check(self, identity: str, now: float | None = None, cost: float = 1.0) -> None:
        """Take `cost` tokens (at most a full bucket: a request larger than the minute's budget
        waits for a full bucket instead of never passing), or answer 429."""
        now = time.monotonic() if now is None else now
        cost = min(float(cost), float(self.per_minute))
        with self._lock:
            tokens, last = self._buckets.pop(identity, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - last) * self.rate)
            if tokens < cost:
                self._buckets[identity] = (tokens, now)
                retry = max(1, math.ceil((cost - tokens) / self.rate))
                raise ServiceError(429, "rate limit exceeded", headers={"Retry-After": str(retry)})
            self._buckets[identity] = (tokens - cost, now)
            if len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)


def authenticate(request: Request, settings: Settings, body_key: str | None) -> str:
    """`authorize`, and a refused key costs the caller's address a token of the rate limit
    (`charge_failure`): guessing keys is throttled on every route that takes one."""
    try:
        return authorize(request, settings, body_key)
    except ServiceError:
        charge_failure(request)
        raise


def charge_failure(request: Request) -> None:
    """A refused request (a wrong or missing key, an invalid body) takes one token of its
    address's rate limit, the same limiter as the requests it serves; once they are spent its
    answer is 429 + Retry-After instead."""
    state = request.app.state.service
    if state.rate_limiter is None:
        return
    try:
        state.rate_limiter.check("ip:" + client_address(request))
    except ServiceError:
        state.metrics.rejected.labels("rate_limit").inc()
        raise


def operator_only(request: Request) -> None:
    """With API keys set, /metrics, /models, /docs and /openapi.json need a key too (header,
    Bearer token or `?api_key=`), unless TRANSERVE_OPEN_OPERATIONAL_ENDPOINTS opens them; the
    probes, the page and LibreTranslate's discovery routes (/languages, /frontend/settings,
    /spec) answer anyone."""
    settings: Settings = request.app.state.settings
    if settings.api_keys and not settings.open_operational_endpoints:
        authenticate(request, settings, request.query_params.get("api_key"))
