"""API keys (constant-time comparison) and a per-client rate limit."""

from __future__ import annotations

import hmac
import threading
import time

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
    return "ip:" + (request.client.host if request.client else "unknown")


class RateLimiter:
    """Fixed one-minute windows per identity; over the limit answers 429 with Retry-After."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._lock = threading.Lock()
        self._windows: dict[str, tuple[int, int]] = {}

    def check(self, identity: str) -> None:
        window = int(time.time() // 60)
        with self._lock:
            start, count = self._windows.get(identity, (window, 0))
            if start != window:
                start, count = window, 0
            if count >= self.per_minute:
                retry = str(60 - int(time.time() % 60))
                raise ServiceError(429, "rate limit exceeded", headers={"Retry-After": retry})
            self._windows[identity] = (start, count + 1)
            if len(self._windows) > 100_000:  # forget old windows; memory stays bounded
                self._windows = {k: v for k, v in self._windows.items() if v[0] == window}
