"""Helpers shared by the test tiers: a real SSE client, a gunicorn runner, PostgreSQL, tokens, and
the fixtures plugin every tier loads (``fixtures.py``, through ``tests/conftest.py``)."""
