"""The test suite: six tiers, one folder each, from fast and pure to a real browser and nginx.

* ``tests/unit``: pure functions and classes; no database, no server, no network.
* ``tests/integration``: a real PostgreSQL (``DATABASE_URL``'s server, else a throwaway cluster)
  and a real ``gunicorn -k gevent -w 2`` on loopback per module, read by a real SSE client
  (``tests/support/sse_client.py``).
* ``tests/security``: access control and abuse resistance seen from the wire (tokens, grants,
  tickets, CORS, limits, redaction, bad input), against the same kind of servers.
* ``tests/chaos``: many reconnecting clients and concurrent publishers under faults (killed
  workers and listeners, PostgreSQL restarts, deploys, reconnect storms, slow consumers).
* ``tests/browser``: Debian's headless Chromium, driven by Playwright, against a real server.
* ``tests/ops``: a real nginx in front, two instances on one database, metrics and health.

Every test is marked with its tier by folder (``pytest -m unit`` runs the fast tier alone,
``-m "not browser"`` skips the browser), by the one ``pytest_collection_modifyitems`` in
``tests/support/fixtures.py``, which also registers the six markers (``--strict-markers``) and
holds the fixtures the tiers share (the PostgreSQL server, per-module databases, the JWT
secret, tokens, users, a module's gunicorn server, streams closed after each test). Each tier's
own conftest holds only what is particular to it.
"""

from __future__ import annotations

pytest_plugins = ["tests.support.fixtures"]
