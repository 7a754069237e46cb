"""Retention (README "Configuration": ``NOTIFICATIONS_RETENTION``, ``..._RETENTION_MAX_EVENTS``,
``NOTIFICATIONS_PRUNE_INTERVAL``; the ``reset`` event of README "The stream"): old events are
pruned by themselves, ``NOTIFICATIONS_RETENTION_MAX_EVENTS`` keeps the newest N, a client asking
for pruned history gets ``reset`` / ``history-expired`` then exactly what is kept, pruning never
blocks or loses publishes, and only one process prunes at a time.

Two servers: the module's (``NOTIFICATIONS_RETENTION=2s``, pruning every second) and a capped
one on a database of its own (``NOTIFICATIONS_RETENTION_MAX_EVENTS``, pruning every second),
started after some history was already pruned so that both replay paths (the table, and a
worker's memory of recent events) are exercised. And idle servers (``idle``), each on a database
of its own, that no client ever sent a stream request or ``/readyz``: pruning starts with the
worker, not with its first stream.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import text

from notifications.extension import get_state
from notifications.locks import prune_key
from tests.support import pg
from tests.support.checks import delivered_ids, wait_until
from tests.support.pg import query
from tests.support.publisher import Publisher
from tests.support.server import GunicornServer, wait_until_serving
from tests.support.sse_client import SSEClient, is_connect_message

KEEP = 200  # NOTIFICATIONS_RETENTION_MAX_EVENTS of the capped server


@pytest.fixture(scope="module")
def server_env() -> dict[str, str]:
    return {"NOTIFICATIONS_RETENTION": "2s", "NOTIFICATIONS_PRUNE_INTERVAL": "1s"}


def table_ids(database_url: str) -> list[int]:
    return [r[0] for r in query(database_url, "SELECT id FROM notification_events ORDER BY id")]


def pruned_through(database_url: str) -> int:
    rows = query(database_url, "SELECT value FROM notification_events_state WHERE key = 'pruned_through'")
    return int(rows[0][0]) if rows else 0


def publish_many(publisher: Publisher, items: list[dict[str, Any]]) -> list[int]:
    return [int(i) for i in publisher.call("publish_many", items)]


def replayed(c: SSEClient, last_id: int) -> tuple[list[str], list[int]]:
    """Wait for ``last_id``; return the reset reasons seen and the ids of the events received."""
    c.wait_for_id(last_id, timeout=15)
    resets = [m.json()["reason"] for m in c.events if m.type == "reset"]
    return resets, delivered_ids(c)


# ------------------------------------------------------------------ by age, automatically


def test_events_older_than_the_retention_are_pruned_by_themselves(
    server, database_url, publisher, open_stream, token, user
):
    c = open_stream(token(user))
    c.wait_connected()
    published_at = time.monotonic()
    ids = [publisher.notify(f"short-lived {n}", user_id=user) for n in range(3)]
    for event_id in ids:
        c.wait_for_id(event_id)  # delivered live before it expires
    assert set(ids) <= set(table_ids(database_url)), "pruned before NOTIFICATIONS_RETENTION"
    wait_until(lambda: not set(ids) & set(table_ids(database_url)), 15, f"events {ids} pruned")
    gone_after = time.monotonic() - published_at
    assert gone_after >= 1.9, f"pruned after {gone_after:.2f}s, before NOTIFICATIONS_RETENTION=2s"
    assert pruned_through(database_url) >= max(ids)


def test_a_stream_asking_for_expired_events_gets_history_expired_and_not_them(
    server, database_url, publisher, open_stream, token, user
):
    """The events were dispatched live by the workers (so a worker still remembers them), then
    pruned by age: a stream resuming from before them must get ``history-expired``, not them."""
    c = open_stream(token(user))
    c.wait_connected()
    ids = [publisher.notify(f"short-lived {n}", user_id=user) for n in range(3)]
    c.wait_for_id(ids[-1])
    wait_until(lambda: not set(ids) & set(table_ids(database_url)), 15, f"events {ids} pruned")
    late = open_stream(token(user), headers={"Last-Event-ID": str(ids[0] - 1)}, name="late")
    late.wait_connected()
    marker = publisher.notify("after", user_id=user)
    late.wait_for_id(marker)
    resets = [m.json() for m in late.events if m.type == "reset"]
    assert resets == [{"type": "reset", "reason": "history-expired"}], (
        f"resets {resets}; replayed {delivered_ids(late)} although {ids} are pruned"
    )
    assert delivered_ids(late) == [marker]


# ------------------------------------------------------------------ with no stream connected


@pytest.fixture
def idle(
    pg_admin_url: str, jwt_secret: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[dict[str, str]], tuple[GunicornServer, Publisher, str]]]:
    """``idle(env)``: a server on a fresh database of its own, started (``/healthz`` answers and
    every worker is up) but never sent a stream request or ``/readyz``; returns it, a publisher
    on its database and the database's URL."""
    started: list[tuple[GunicornServer | None, str]] = []

    def start(env: dict[str, str]) -> tuple[GunicornServer, Publisher, str]:
        url = pg.create_database(pg_admin_url, "t_retention_idle")
        started.append((None, url))
        srv = GunicornServer(url, jwt_secret, tmp_path_factory.mktemp("idle") / "gunicorn.log", env=env)
        started[-1] = (srv, url)
        srv.start()  # waits for /healthz only: no stream, no /readyz
        return srv, Publisher(url, jwt_secret), url

    yield start
    for srv, url in started:
        if srv is not None:
            srv.stop()
        pg.drop_database(pg_admin_url, url)


def assert_never_streamed(srv: GunicornServer) -> None:
    """The access log shows no stream request and no /readyz: nothing started the pruner but the
    worker's start."""
    log = srv.log_path.read_text(errors="replace")
    assert "/api/notifications/stream" not in log and "/readyz" not in log, srv.log_tail()


def test_pruning_by_age_starts_with_the_worker(idle):
    srv, pub, url = idle({"NOTIFICATIONS_RETENTION": "2s", "NOTIFICATIONS_PRUNE_INTERVAL": "1s"})
    ids = [pub.publish("unseen", {"n": n}) for n in range(3)]
    try:
        wait_until(
            lambda: not table_ids(url) and pruned_through(url) >= max(ids),
            15,
            f"events {ids} pruned by a server no stream ever connected to",
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the table holds {table_ids(url)}\n{srv.log_tail()}") from None
    assert_never_streamed(srv)


def test_max_events_applies_with_no_stream_connected(idle):
    srv, pub, url = idle({"NOTIFICATIONS_RETENTION_MAX_EVENTS": "3", "NOTIFICATIONS_PRUNE_INTERVAL": "1s"})
    ids = publish_many(pub, [{"event": "unseen", "data": {"n": n}} for n in range(7)])
    try:
        wait_until(lambda: table_ids(url) == ids[-3:], 15, f"the table pruned to the newest 3 of {ids}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the table holds {table_ids(url)}\n{srv.log_tail()}") from None
    assert pruned_through(url) == ids[-4]
    assert_never_streamed(srv)


# ------------------------------------------------------------------ the capped server


@dataclass
class Capped:
    server: GunicornServer
    publisher: Publisher
    database_url: str
    floor: int  # the newest id when the server started: its workers remember what came after


@pytest.fixture(scope="module")
def capped(pg_admin_url: str, jwt_secret: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Capped]:
    url = pg.create_database(pg_admin_url, "t_retention_capped")
    srv = None
    try:
        pub = Publisher(url, jwt_secret)
        # history from before the server: KEEP + 50 broadcasts, the oldest 50 pruned already
        ids = publish_many(pub, [{"event": "before", "data": {"n": n}} for n in range(KEEP + 50)])
        pub.sequence()  # no server yet: deliver them here
        with pub.app.app_context():
            assert get_state().store.prune(None, KEEP) == 50
        env = {"NOTIFICATIONS_RETENTION_MAX_EVENTS": str(KEEP), "NOTIFICATIONS_PRUNE_INTERVAL": "1s"}
        srv = GunicornServer(url, jwt_secret, tmp_path_factory.mktemp("capped") / "gunicorn.log", env=env)
        srv.start()
        wait_until_serving(srv, pub)
        yield Capped(srv, pub, url, max(ids))
    except BaseException:
        if srv is not None:
            print(srv.log_tail())
        raise
    finally:
        if srv is not None:
            srv.stop()
        pg.drop_database(pg_admin_url, url)


@pytest.fixture
def capped_stream(capped: Capped) -> Iterator[Callable[..., SSEClient]]:
    opened: list[SSEClient] = []

    def make(*args: Any, **kwargs: Any) -> SSEClient:
        client = capped.server.stream(*args, **kwargs)
        opened.append(client)
        return client

    yield make
    for c in opened:
        c.close()


def settled(capped: Capped, newest: int | None = None) -> list[int]:
    """Wait until the automatic pruning has brought the table down to the newest KEEP (ending
    with ``newest``, once the sequencer has delivered it)."""

    def check() -> list[int] | None:
        ids = table_ids(capped.database_url)
        return ids if len(ids) == KEEP and (newest is None or ids[-1] == newest) else None

    return wait_until(check, 15, f"the table pruned to the newest {KEEP} events")


def test_max_events_keeps_only_the_newest(capped, capped_stream, token, user):
    # every other event targets this test's user: the next test's stream must not replay those
    burst = [{"event": "burst", "data": n, **({"user_id": user} if n % 2 else {})} for n in range(KEEP + 30)]
    ids = publish_many(capped.publisher, burst)
    kept = settled(capped, ids[-1])
    assert kept == ids[-KEEP:]
    assert pruned_through(capped.database_url) == ids[-KEEP - 1]


def test_history_expired_from_the_table_then_exactly_what_is_kept(capped, capped_stream, token, user):
    """Last-Event-ID older than the server's start: replayed from the table."""
    kept = settled(capped)
    assert kept[-1] > capped.floor  # this test runs after the burst above, or with the probe alone
    visible = [
        r[0]
        for r in query(
            capped.database_url,
            "SELECT id FROM notification_events WHERE user_id IS NULL OR user_id = %s ORDER BY id",
            user,
        )
    ]
    assert visible and visible[0] > capped.floor - KEEP
    c = capped_stream(token(user), headers={"Last-Event-ID": "0"}, name="from-0")
    resets, got = replayed(c, visible[-1])
    assert resets == ["history-expired"], [m.raw for m in c.messages[:4]]
    assert got == visible
    first = [m for m in c.events]
    assert first[0].type == "reset" and is_connect_message(first[1]), [m.raw for m in first[:3]]


def test_history_expired_from_a_workers_memory_then_exactly_what_is_kept(capped, capped_stream, token, user):
    """Last-Event-ID newer than the server's start, of events published (and dispatched) since
    and then pruned: a worker still holds them in its memory of recent events, but they are
    gone from the table, so the client must get ``history-expired`` and only what is kept."""
    ids = publish_many(capped.publisher, [{"event": "mem", "data": n} for n in range(KEEP + 20)])
    kept = settled(capped, ids[-1])
    assert kept == ids[-KEEP:]
    since = ids[0] - 1  # >= capped.floor: after the server started
    assert since >= capped.floor
    c = capped_stream(token(user), headers={"Last-Event-ID": str(since)}, name="from-memory")
    resets, got = replayed(c, kept[-1])
    assert resets == ["history-expired"], (
        f"no history-expired for pruned events {ids[0]}..{ids[19]}; received {len(got)} events from "
        f"{got[:1]} to {got[-1:]}"
    )
    assert got == kept, f"expected exactly the kept {kept[0]}..{kept[-1]}, got {len(got)}: {got[:3]}..."


def test_pruning_while_publishing_loses_nothing_and_blocks_nothing(capped, capped_stream, jwt_secret, token, user):
    """Four threads publish for a few seconds while prune runs over and over (this process's
    own ``prune_once`` besides the server's): every publish succeeds quickly, a live stream gets
    every event once in order, and the table ends with exactly the newest KEEP."""
    c = capped_stream(token(user), name="live")
    c.wait_connected()
    pruner = Publisher(capped.database_url, jwt_secret, NOTIFICATIONS_RETENTION_MAX_EVENTS=str(KEEP))
    stop = threading.Event()
    lock = threading.Lock()
    published: list[int] = []
    latencies: list[float] = []
    prunes: list[int | None] = []
    errors: list[BaseException] = []

    def publishing(n: int) -> None:
        try:
            i = 0
            while not stop.is_set():
                started = time.monotonic()
                if i % 5 == 4:
                    new = publish_many(capped.publisher, [{"event": "load", "data": [n, i, k]} for k in range(5)])
                else:
                    new = [capped.publisher.publish("load", [n, i])]
                took = time.monotonic() - started
                with lock:
                    published.extend(new)
                    latencies.append(took)
                i += 1
        except BaseException as exc:
            errors.append(exc)

    def pruning() -> None:
        try:
            while not stop.is_set():
                with pruner.app.app_context():
                    prunes.append(get_state().pruner.prune_once())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=publishing, args=(n,), name=f"pub-{n}") for n in range(4)]
    threads.append(threading.Thread(target=pruning, name="pruner"))
    for t in threads:
        t.start()
    try:
        wait_until(
            lambda: len(published) >= 4 * KEEP and sum(1 for p in prunes if p) >= 3,
            20,
            "enough publishes and prunes that deleted something",
        )
    finally:
        stop.set()
        for t in threads:
            t.join(15)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    assert max(latencies) < 2.0, f"a publish took {max(latencies):.2f}s while pruning"
    ids = sorted(published)
    assert len(set(ids)) == len(ids)
    c.wait_for_id(ids[-1], timeout=15)
    got = delivered_ids(c)
    assert got == ids, (
        f"live stream: {len(got)} events for {len(ids)} published; missing {sorted(set(ids) - set(got))[:10]}"
    )
    assert settled(capped) == ids[-KEEP:]


# ------------------------------------------------------------------ one pruner at a time


@pytest.fixture
def prune_db(pg_admin_url: str) -> Iterator[str]:
    url = pg.create_database(pg_admin_url, "t_retention_lock")
    yield url
    pg.drop_database(pg_admin_url, url)


def test_only_one_process_prunes_at_a_time(prune_db, jwt_secret):
    first = Publisher(prune_db, jwt_secret, NOTIFICATIONS_RETENTION="0s")
    second = Publisher(prune_db, jwt_secret, NOTIFICATIONS_RETENTION="0s")
    ids = [first.publish("old", n) for n in range(4)]
    first.sequence()
    with first.app.app_context():
        state = get_state()
        key = prune_key(state.names)
    inside, release = threading.Event(), threading.Event()
    original = state.store.prune

    def slow_prune(*args: Any, **kwargs: Any) -> int:
        inside.set()
        assert release.wait(15), "never released"
        return original(*args, **kwargs)

    state.store.prune = slow_prune  # type: ignore[method-assign]
    result: dict[str, Any] = {}

    def run_first() -> None:
        try:
            with first.app.app_context():
                result["first"] = get_state().pruner.prune_once()
        except BaseException as exc:
            result["error"] = exc
        finally:
            inside.set()

    thread = threading.Thread(target=run_first, name="first-pruner")
    thread.start()
    try:
        assert inside.wait(10), "the first pruner never started"
        assert "error" not in result, result
        holders = query(
            prune_db,
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND ((classid::bigint << 32) | objid::bigint) = %s",  # this database's: other modules prune too
            key & 0xFFFFFFFFFFFFFFFF,
        )
        assert holders == [(1,)], f"the pruning lock is not held while pruning: {holders}"
        with second.app.app_context():
            assert get_state().pruner.prune_once() is None, "a second process pruned while the first was pruning"
        assert table_ids(prune_db) == ids  # the second one deleted nothing
    finally:
        release.set()
        thread.join(15)
    assert "error" not in result, result
    assert result["first"] == len(ids)
    assert table_ids(prune_db) == []
    # the lock is free again: the second process prunes now
    newer = second.publish("old", 99)
    second.sequence()
    with second.app.app_context():
        assert get_state().pruner.prune_once() == 1
    assert newer not in table_ids(prune_db)


def test_prune_once_is_refused_while_another_session_holds_the_lock(prune_db, jwt_secret):
    """The lock is PostgreSQL's, so it works across machines: any session holding it stops
    every app's ``prune_once``, which then neither waits nor deletes."""
    app = Publisher(prune_db, jwt_secret, NOTIFICATIONS_RETENTION="0s")
    event_id = app.publish("old", 1)
    app.sequence()
    with app.app.app_context():
        state = get_state()
        with state.store.engine.connect() as other:
            assert other.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": prune_key(state.names)}).scalar()
            started = time.monotonic()
            assert state.pruner.prune_once() is None
            assert time.monotonic() - started < 2, "prune_once waited for the lock instead of giving up"
            assert event_id in table_ids(prune_db)
            other.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": prune_key(state.names)})
            other.commit()
        assert state.pruner.prune_once() == 1
