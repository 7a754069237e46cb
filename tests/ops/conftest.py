"""Fixtures of the ops tier: real nginx, two instances, metrics and health.

The database, token and server fixtures are the integration tier's, imported here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.conftest import (  # noqa: F401  (fixtures)
    database_url,
    jwt_secret,
    open_stream,
    pg_admin_url,
    publisher,
    server,
    server_env,
    token,
    user,
)

HERE = Path(__file__).parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "ops: nginx in front, several instances, metrics and health")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.ops)
