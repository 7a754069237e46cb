"""Abuse limits kept in PostgreSQL, so they hold across workers and machines.

* ``a`` and ``b``: two gunicorn instances (2 workers each) on the *same* database, with
  ``NOTIFICATIONS_MAX_STREAMS_PER_USER=3`` (connect rates left generous).
* ``r``: its own database, ``NOTIFICATIONS_CONNECT_RATE_PER_USER=5/minute`` and
  ``NOTIFICATIONS_CONNECT_RATE_PER_ADDRESS=40/minute`` (streams per user left generous). The per-address
  tests connect from other loopback addresses (127.0.0.2, 127.0.0.3), so the rest of the module's
  traffic from 127.0.0.1 does not count against them.

The races send every request at once (``threading.Barrier``) on connections opened beforehand,
each already accepted by a known worker (``wire.idle_connections``), so a race spans every worker
it names: connects are admitted in batches (one transaction per batch of a worker), and batches
on different workers and instances must never both take a user's last slot or rate unit.

A SIGKILLed worker cannot release its streams; they stop counting once its lease lapses
(``limits.LEASE_SECONDS`` = 30 s, not configurable). The module kills ``b``'s workers first and
checks the lapse last, so the wait overlaps the other tests (which use other users).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from types import SimpleNamespace

import pytest

from tests.support import pg
from tests.support.checks import assert_refused, fresh_window
from tests.support.tokens import mint

from .wire import STREAM, Attempt, attempt, idle_connections, request

MAX = 3
LEASE_SECONDS = 30.0  # notifications.limits.LEASE_SECONDS
LIMITS = {"NOTIFICATIONS_MAX_STREAMS_PER_USER": str(MAX)}
RATES = {
    "NOTIFICATIONS_CONNECT_RATE_PER_USER": "5/minute",
    "NOTIFICATIONS_CONNECT_RATE_PER_ADDRESS": "40/minute",
    # loopback is exempt from the per-address rate by default (a local proxy); not here
    "NOTIFICATIONS_RATE_LIMIT_EXEMPT": "",
}
PER_ADDRESS = 40


@pytest.fixture(scope="module")
def rates_database_url(pg_admin_url):
    url = pg.create_database(pg_admin_url, "sec_rates")
    yield url
    pg.drop_database(pg_admin_url, url)


@pytest.fixture(scope="module")
def servers(server_factory, rates_database_url):
    a, b, r = server_factory.start_many(
        [
            {"name": "limits-a", "env": LIMITS},
            {"name": "limits-b", "env": LIMITS},
            {"name": "rates", "env": RATES, "database_url": rates_database_url},
        ]
    )
    return SimpleNamespace(a=a, b=b, r=r)


def admitted(srv, tok, source=None, **params):
    """One stream attempt: the error data if refused, else None (the stream is closed at once)."""
    query = "&".join(f"{k}={v}" for k, v in {"token": tok, **params}.items())
    got = attempt(srv, f"{STREAM}?{query}", source=source)
    assert got.status == 200 and got.body.startswith(b"retry:"), (got.status, got.body[:200])
    if got.connected:
        return None
    assert got.error is not None, f"neither connected nor refused: {got.body[:300]!r}"
    return got


def refused(srv, tok, code=429):
    with srv.stream(tok) as c:
        return assert_refused(c, code)


def race(conns, tok):
    """Send a stream request with ``tok`` on every connection (``(server, socket, worker pid)``)
    at once; return ``(server, worker pid, Attempt)`` for each. The sockets stay open (admitted
    streams keep their slots) until the caller closes them."""
    barrier = threading.Barrier(len(conns))
    results: list[object] = [None] * len(conns)

    def go(i, srv, sock, pid):
        try:
            barrier.wait(10)
            results[i] = (srv, pid, attempt(srv, f"{STREAM}?token={tok}", sock=sock, timeout=15))
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=go, args=(i, *conn)) for i, conn in enumerate(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    failed = [r for r in results if not isinstance(r, tuple)]
    assert not failed, failed[:3]
    for _, _, got in results:
        answered = isinstance(got, Attempt) and got.status == 200 and (got.connected or got.error)
        assert answered, (got.status, got.body[:300])
    return results


def close_all(conns):
    for _, sock, _ in conns:
        sock.close()


def open_on(srv, clients, tok):
    c = srv.stream(tok)
    clients.append(c)
    c.wait_connected()
    return c


def wait_admitted(srv, tok, timeout=5.0):
    """Attempt until a stream is admitted; return how long it took (fails after ``timeout``)."""
    start = time.monotonic()
    while True:
        c = srv.stream(tok)
        try:
            first = c.wait_for(lambda m: m.is_event, what="first event")
        except AssertionError:
            c.close()
            raise
        if first.type != "error":
            return time.monotonic() - start, c
        assert first.json()["code"] == 429, first.raw
        c.close()
        if time.monotonic() - start > timeout:
            raise AssertionError(f"no stream admitted within {timeout}s after a slot was freed")
        time.sleep(0.1)  # retry pacing, bounded by the deadline


# ------------------------------------------------------------------ a SIGKILLed worker (part 1)


@pytest.fixture(scope="module")
def killed(servers):
    """User K holds 3 streams on ``b``; both of ``b``'s workers are SIGKILLed; gunicorn restarts them."""
    srv = servers.b
    user = "killed-" + os.urandom(3).hex()
    tok = mint(srv.secret, user)
    streams = [srv.stream(tok, name=f"k{i}") for i in range(MAX)]
    for c in streams:
        c.wait_connected()
    old = set(srv.worker_pids())
    for pid in old:
        os.kill(pid, signal.SIGKILL)
    killed_at = time.time()
    for c in streams:
        c.wait_closed(timeout=5)
        c.close()
    deadline = time.monotonic() + 30
    while not (len(srv.worker_pids()) == 2 and not old & set(srv.worker_pids())):
        assert time.monotonic() < deadline, "gunicorn did not replace the killed workers"
        time.sleep(0.1)
    # the new workers serve (streams of another user are admitted, on both of them)
    for i in range(4):
        assert admitted(srv, mint(srv.secret, f"{user}-other{i}")) is None
    return SimpleNamespace(user=user, token=tok, at=killed_at)


def test_killed_workers_streams_still_count_at_first(servers, killed):
    got = admitted(servers.b, killed.token)
    assert got is not None and got.error["code"] == 429, "the streams of a killed worker were released at once?"
    assert "open streams" in got.error["error"], got.error


# ------------------------------------------------------------------ streams per user


def test_fourth_stream_of_a_user_is_refused_429(servers, clients, token, user):
    for _ in range(MAX):
        open_on(servers.a, clients, token(user))
    c = servers.a.stream(token(user))
    clients.append(c)
    data = assert_refused(c, 429)
    assert "open streams" in data["error"], data
    assert c.header("Retry-After") is not None and int(c.header("Retry-After")) > 0
    other = open_on(servers.a, clients, token(f"{user}-other"))  # other users are not affected
    assert not other.closed


def test_limit_holds_across_the_workers_of_one_instance(servers, clients, token, user):
    tok = token(user)
    kept, tries = [], 0
    deadline = time.monotonic() + 60  # which worker accepts is up to the kernel: keep trying
    while len(kept) < MAX:
        tries += 1
        assert time.monotonic() < deadline, f"could not spread {MAX} streams over both workers in {tries} tries"
        c = servers.a.stream(tok)
        first = c.wait_for(lambda m: m.is_event, what="first event")
        if first.type == "error":  # a surplus stream just closed: its slot is released in <0.5 s
            c.close()
            time.sleep(0.3)  # retry pacing
            continue
        pid = servers.a.wait_worker_of(c)
        if len(kept) == MAX - 1 and all(p == pid for _, p in kept):
            c.close()  # all on one worker: try again for the other one
            time.sleep(0.3)
            continue
        kept.append((c, pid))
        clients.append(c)
    assert len({p for _, p in kept}) == 2
    for _ in range(4):
        refused(servers.a, tok)


def test_limit_holds_across_two_instances_on_one_database(servers, clients, token, user):
    tok = token(user)
    on_a = [open_on(servers.a, clients, tok) for _ in range(2)]
    on_b = open_on(servers.b, clients, tok)
    refused(servers.a, tok)
    refused(servers.b, tok)
    on_b.close()
    took, c = wait_admitted(servers.a, tok)
    clients.append(c)
    assert took <= 2.5, f"a slot freed on instance b reached a after {took:.2f}s"
    on_a[0].close()
    took, c = wait_admitted(servers.b, tok)
    clients.append(c)
    assert took <= 2.5, f"a slot freed on instance a reached b after {took:.2f}s"


def test_closing_a_stream_frees_its_slot_promptly(servers, clients, token, user):
    tok = token(user)
    streams = [open_on(servers.a, clients, tok) for _ in range(MAX)]
    refused(servers.a, tok)
    streams[1].close()
    took, c = wait_admitted(servers.a, tok)
    clients.append(c)
    assert took <= 2.5, f"slot freed after {took:.2f}s"
    refused(servers.a, tok)  # exactly one slot came back


def test_refused_attempts_take_no_slot(servers, clients, token, user):
    tok = token(user)
    streams = [open_on(servers.b, clients, tok) for _ in range(MAX)]
    for _ in range(5):
        refused(servers.b, tok)
    streams[0].close()
    _, c = wait_admitted(servers.b, tok)
    clients.append(c)
    refused(servers.b, tok)


def test_simultaneous_connects_cannot_exceed_the_limit(servers, clients, token, user):
    tok = token(user)
    results: list[object] = []
    barrier = threading.Barrier(10)

    def go(srv):
        barrier.wait()
        c = srv.stream(tok)
        clients.append(c)
        first = c.wait_for(lambda m: m.is_event, what="first event")
        results.append(first.type)

    threads = [threading.Thread(target=go, args=(servers.a if i % 2 else servers.b,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert len(results) == 10
    assert results.count("error") == 10 - MAX, results


def test_forty_simultaneous_connects_on_four_workers_admit_exactly_the_limit(servers, token, user):
    """One user, 40 connects at once, 10 on each worker of ``a`` and ``b``: exactly MAX are
    admitted, the other 37 get 429 for open streams; no overshoot."""
    tok = token(user)
    conns = [(srv, sock, pid) for srv in (servers.a, servers.b) for sock, pid in idle_connections(srv, 10)]
    try:
        results = race(conns, tok)
    finally:
        close_all(conns)
    per_worker = Counter(pid for _, pid, _ in results)
    assert len(per_worker) == 4 and set(per_worker.values()) == {10}, per_worker
    admitted = [(srv.port, pid) for srv, pid, got in results if got.connected]
    refusals = [got.error for _, _, got in results if not got.connected]
    assert len(admitted) == MAX, f"{len(admitted)} admitted (on instance port, worker pid: {admitted})"
    assert len(refusals) == 40 - MAX
    assert all(e["code"] == 429 and "open streams" in e["error"] for e in refusals), refusals[:3]


def test_head_requests_do_not_leak_stream_slots(servers, clients, token, user):
    """Flask answers HEAD with the GET view: the stream is admitted (a slot taken) but its body,
    whose ``finally`` releases the slot, may never run. HEADs must not lock the user out."""
    tok = token(user)
    for _ in range(MAX + 1):
        r = request(servers.a, "HEAD", f"{STREAM}?token={tok}", timeout=5)
        assert r.status in (200, 405), r.status
    took, c = wait_admitted(servers.a, tok, timeout=3.0)
    clients.append(c)


# ------------------------------------------------------------------ connect rates


def test_connect_rate_per_user(servers, token, user):
    srv = servers.r
    fresh_window()
    for i in range(5):
        assert admitted(srv, token(user)) is None, f"attempt {i + 1} of 5 refused"
    got = admitted(srv, token(user))
    assert got is not None and got.error["code"] == 429, "6th attempt in a minute admitted"
    assert "connection attempts" in got.error["error"]
    retry_after = got.header("Retry-After")
    assert retry_after is not None and retry_after.isdigit(), got.headers
    left = 60 - time.time() % 60
    assert 1 <= int(retry_after) <= 60 and abs(int(retry_after) - left) <= 2, (retry_after, left)
    assert got.error.get("retryAfter") == int(retry_after)
    assert admitted(srv, token(f"{user}-other")) is None  # another user is not affected


def test_twenty_simultaneous_connects_admit_exactly_the_rate(servers, token, user):
    """One fresh user, 20 connects at once, 10 on each worker of ``r`` (from 127.0.0.5, far
    below the per-address rate): exactly 5 are admitted, the other 15 get 429; no overshoot."""
    srv = servers.r
    fresh_window(min_left=15)
    conns = [(srv, sock, pid) for sock, pid in idle_connections(srv, 10, source="127.0.0.5")]
    try:
        results = race(conns, token(user))
    finally:
        close_all(conns)
    assert set(Counter(pid for _, pid, _ in results).values()) == {10}
    admitted = [pid for _, pid, got in results if got.connected]
    refusals = [got.error for _, _, got in results if not got.connected]
    assert len(admitted) == 5, f"{len(admitted)} of 20 admitted at 5/minute (on workers {admitted})"
    assert len(refusals) == 15
    assert all(e["code"] == 429 and "connection attempts" in e["error"] for e in refusals), refusals[:3]


def test_connect_rate_per_address(servers, token, user):
    srv = servers.r
    fresh_window(min_left=15)
    for i in range(PER_ADDRESS):
        assert admitted(srv, token(f"{user}-{i}"), source="127.0.0.2") is None, f"attempt {i + 1} refused"
    got = admitted(srv, token(f"{user}-last"), source="127.0.0.2")
    assert got is not None and got.error["code"] == 429, f"attempt {PER_ADDRESS + 1} from one address admitted"
    assert got.header("Retry-After") and int(got.header("Retry-After")) >= 1
    # another address is not affected
    assert admitted(srv, token(f"{user}-elsewhere"), source="127.0.0.3") is None


def test_forwarded_for_does_not_escape_the_address_limit(servers, token, user):
    """No proxy is trusted: a spoofed X-Forwarded-For is not a new address."""
    srv = servers.r
    fresh_window(min_left=15)
    refused = 0
    for i in range(PER_ADDRESS + 5):
        query = f"token={token(f'{user}-{i}')}"
        got = attempt(
            srv,
            f"{STREAM}?{query}",
            source="127.0.0.4",
            headers={
                "X-Forwarded-For": f"203.0.113.{i}",
                "X-Real-IP": f"198.51.100.{i}",
                "Forwarded": f"for=192.0.2.{i}",
            },
        )
        assert got.status == 200
        if got.error is not None:
            assert got.error["code"] == 429
            refused += 1
    assert refused == 5, f"{refused} of {PER_ADDRESS + 5} attempts refused; expected the last 5"


# ------------------------------------------------------------------ a SIGKILLed worker (part 2)


def test_killed_workers_streams_stop_counting_once_the_lease_lapses(servers, killed):
    """Runs last in the module: by now most of the lease has passed during the other tests."""
    wait = killed.at + LEASE_SECONDS + 1.0 - time.time()
    if wait > 0:
        time.sleep(wait)  # the lease lapsing is what is under test
    got = admitted(servers.b, killed.token)
    assert got is None, (
        f"{time.time() - killed.at:.1f}s after its workers were killed, user K is still refused: {got.error}"
    )
