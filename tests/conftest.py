"""Test tiers: ``tests/unit`` (pure, no database) and ``tests/integration`` (real PostgreSQL and
a real ``gunicorn -k gevent -w 2`` on loopback, read by a real SSE client).

Markers ``unit`` and ``integration`` are applied by folder, so ``pytest -m unit`` runs the fast tier.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.sse_client import SSEClient

HERE = Path(__file__).parent


def pytest_configure(config: pytest.Config) -> None:
    # Registered here as well as (eventually) in pyproject, so --strict-markers never trips.
    config.addinivalue_line("markers", "unit: pure tests, no database, no server")
    config.addinivalue_line("markers", "integration: real PostgreSQL and a real gunicorn+gevent server")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).relative_to(HERE).parts
        if parts and parts[0] in ("unit", "integration"):
            item.add_marker(getattr(pytest.mark, parts[0]))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        server = getattr(item, "funcargs", {}).get("server")
        if server is not None and hasattr(server, "log_tail"):
            report.sections.append(("gunicorn log", server.log_tail()))


@pytest.fixture
def clients() -> Iterator[list[SSEClient]]:
    """Register clients here (``clients.append(c)``) to have them closed after the test."""
    opened: list[SSEClient] = []
    yield opened
    for c in opened:
        c.close()
