"""Helpers shared by the test tiers: a real SSE client, a gunicorn runner, PostgreSQL, tokens."""
