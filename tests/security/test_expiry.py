"""Streams do not outlive their token or their maximum lifetime.

* ``expiry`` server: ``NOTIFICATIONS_EXPIRY_WARNING=2``, ``NOTIFICATIONS_TICKET_TTL=1``: a stream
  gets ``token-expiring`` 2 s before ``exp``, then an ``error`` 401 at ``exp``, then the end.
* ``lifetime`` server: ``NOTIFICATIONS_MAX_STREAM_LIFETIME=2``: a stream ends after 1.6-2 s (the
  lifetime is jittered 80-100 %) with a fresh ``retry:`` and no error.
"""

from __future__ import annotations

import json
import math
import time
from types import SimpleNamespace

import pytest

from tests.support.checks import assert_refused

from .wire import TICKET, request


@pytest.fixture(scope="module")
def servers(server_factory):
    expiry, lifetime = server_factory.start_many(
        [
            {"name": "expiry", "env": {"NOTIFICATIONS_EXPIRY_WARNING": "2", "NOTIFICATIONS_TICKET_TTL": "1"}},
            {"name": "lifetime", "env": {"NOTIFICATIONS_MAX_STREAM_LIFETIME": "2"}},
        ]
    )
    return SimpleNamespace(expiry=expiry, lifetime=lifetime, publisher=server_factory.publisher())


def short_token(token, user, seconds=3):
    """A token whose ``exp`` is 3-4 s ahead (``exp`` is whole seconds)."""
    exp = math.ceil(time.time()) + seconds
    return token(user, ttl=exp - int(time.time())), exp


def assert_expires_on_time(c, exp, publisher, user):
    c.wait_connected()
    # still live before the warning
    c.wait_for_id(publisher.notify("before", user_id=user))
    warning = c.wait_for_event("token-expiring", timeout=6)
    warned_at = time.time() - (time.monotonic() - warning.at)
    data = warning.json()
    assert data["type"] == "token-expiring", data
    assert data["expiresAt"] == exp, data
    assert data["expiresIn"] in (1, 2), data
    assert exp - 2.3 <= warned_at <= exp - 0.5, f"warned {exp - warned_at:.2f}s before exp"
    error = c.wait_for_event("error", timeout=4)
    errored_at = time.time() - (time.monotonic() - error.at)
    assert error.json()["code"] == 401, error.json()
    assert exp - 0.05 <= errored_at <= exp + 1.0, f"error {errored_at - exp:+.2f}s from exp"
    c.wait_closed(timeout=3)
    after = [m for m in c.messages if m.at > error.at]
    assert not after, f"messages after the expiry error: {[m.raw for m in after]}"
    assert c.events[-1] is not None and c.events[-1].type == "error"


def test_token_expiring_then_error_at_exp(servers, clients, token, user):
    tok, exp = short_token(token, user)
    c = servers.expiry.stream(tok)
    clients.append(c)
    assert_expires_on_time(c, exp, servers.publisher, user)


def test_ticket_does_not_extend_the_tokens_life(servers, clients, token, user):
    tok, exp = short_token(token, user)
    r = request(servers.expiry, "POST", TICKET, b"", {"Authorization": f"Bearer {tok}"})
    assert r.status == 201, r.body
    assert r.json()["expiresIn"] == 1
    c = servers.expiry.stream(params={"ticket": r.json()["ticket"]})
    clients.append(c)
    assert_expires_on_time(c, exp, servers.publisher, user)


def test_expired_ticket_is_refused(servers, clients, token, user):
    r = request(servers.expiry, "POST", TICKET, b"", {"Authorization": f"Bearer {token(user)}"})
    assert r.status == 201, r.body
    body = r.json()
    assert body["expiresIn"] == 1
    time.sleep(1.5)  # the ticket's lifetime is what is under test
    c = servers.expiry.stream(params={"ticket": body["ticket"]})
    clients.append(c)
    data = assert_refused(c, 401)
    assert "ticket" in data["error"]


def test_long_lived_token_gets_no_warning(servers, clients, token, user):
    c = servers.expiry.stream(token(user))
    clients.append(c)
    c.wait_connected()
    time.sleep(1.2)  # heartbeats flow (1 s); no warning may come with them
    c.wait_for_id(servers.publisher.notify("still here", user_id=user))
    assert not [m for m in c.events if m.type in ("token-expiring", "error")]


def test_max_stream_lifetime_ends_the_stream_cleanly(servers, clients, token, user):
    c = servers.lifetime.stream(token(user))
    clients.append(c)
    c.wait_connected()
    c.wait_for_id(servers.publisher.notify("during", user_id=user))
    c.wait_closed(timeout=5)
    last = c.messages[-1]
    elapsed = last.at - c.opened_at
    assert 1.5 <= elapsed <= 2.3, f"stream ended {elapsed:.2f}s after it was opened (lifetime 2 s, jittered 80-100 %)"
    assert last.retry is not None and last.data is None, f"last block is not a retry: {last.raw!r}"
    assert 1500 <= last.retry <= 4500, last.retry
    assert not [m for m in c.events if m.type == "error"], [m.raw for m in c.events]
    assert c.raw.endswith(b"\n\n")


def test_max_stream_lifetime_applies_to_every_stream(servers, clients, token, user):
    started = [servers.lifetime.stream(token(user)) for _ in range(4)]
    clients.extend(started)
    for c in started:
        c.wait_connected()
    for c in started:
        c.wait_closed(timeout=5)
        assert c.messages[-1].at - c.opened_at <= 2.3
    assert all(json.loads(m.data)["code"] != 401 for c in started for m in c.events if m.type == "error")
