"""The service fixtures are shared with tests/service."""

from tests.service.conftest import client  # noqa: F401
