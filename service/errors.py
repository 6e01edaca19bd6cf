"""Domain errors: each maps to one HTTP status and a short, stable message."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.headers, self.extra = status, message, headers, extra


def bad_request(message: str) -> ServiceError:
    return ServiceError(400, message)


def too_large(message: str) -> ServiceError:
    return ServiceError(413, message)


def busy() -> ServiceError:
    return ServiceError(503, "server busy, retry later", headers={"Retry-After": "1"})


def not_ready() -> ServiceError:
    return ServiceError(503, "models are still loading", headers={"Retry-After": "1"})
