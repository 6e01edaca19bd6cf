"""What the routes' OpenAPI documentation shares: error answers and form-or-JSON bodies."""

from __future__ import annotations

from typing import Any

from service.schemas import ErrorResponse

ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorResponse} for s in (400, 403, 408, 413, 415, 422, 429, 431, 500, 503, 504)
}


def body_doc(model) -> dict:
    """The request body a route parses itself (deps.request_values): JSON or a form."""
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": schema},
                "application/x-www-form-urlencoded": {"schema": schema},
            },
        }
    }
