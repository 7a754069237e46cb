"""The Python publish API: return values, and invalid input raises ValueError and stores nothing."""

from __future__ import annotations

import math
import types

import pytest

from tests.support.checks import delivered_ids


def test_public_names(publisher):
    import notifications
    from notifications import NotificationsError, PublishError, broadcast_update, notify, publish

    for fn in (notify, broadcast_update, publish):
        assert callable(fn) and not isinstance(fn, types.ModuleType), f"{fn!r} is not the function"
    assert issubclass(PublishError, NotificationsError)
    assert issubclass(NotificationsError, Exception)
    # again, now that the app (and every submodule) has been imported
    for name in ("notify", "broadcast_update", "publish"):
        assert not isinstance(getattr(notifications, name), types.ModuleType), (
            f"notifications.{name} is the submodule, not the function"
        )


def test_returns_increasing_decimal_string_ids(publisher):
    raw = [
        publisher.call("notify", "a"),
        publisher.call("broadcast_update", "x", "created", {}),
        publisher.call("publish", "e", 1),
    ]
    assert all(isinstance(r, str) and r.isdigit() and int(r) > 0 for r in raw), raw
    assert [int(r) for r in raw] == sorted(int(r) for r in raw) and len(set(raw)) == 3


class Unserialisable:
    pass


INVALID = [
    ("notify", ("x",), {"notification_type": "fatal"}),
    ("notify", ("nul \x00 in message",), {}),
    ("notify", ("x",), {"title": "nul\x00title"}),
    ("broadcast_update", ("order", "exploded", {}), {}),
    ("broadcast_update", ("order", "created", {"k": "a\x00b"}), {}),
    ("publish", ("bad event!", {}), {}),
    ("publish", ("", {}), {}),
    ("publish", ("line\nbreak", {}), {}),
    ("publish", ("ok", {}), {"channel": "bad channel"}),
    ("publish", ("ok", {}), {"channel": "c" * 129}),
    ("publish", ("ok", Unserialisable()), {}),
    ("publish", ("ok", {"s": {1, 2}}), {}),
    ("publish", ("ok", math.nan), {}),
    ("publish", ("ok", {"v": math.inf}), {}),
    ("publish", ("ok", {"a": "x\x00y"}), {}),
    ("publish", ("ok", {"a\x00": 1}), {}),
    ("publish", ("ok", ["deep", {"deeper": ["\x00"]}]), {}),
    ("publish", ("ok", "x" * 70000), {}),
    ("notify", ("x" * 70000,), {}),
]


@pytest.mark.parametrize(
    ("fn", "args", "kwargs"),
    INVALID,
    ids=[
        "notify-bad-type",
        "notify-nul-message",
        "notify-nul-title",
        "update-bad-action",
        "update-nul-payload",
        "publish-bad-name",
        "publish-empty-name",
        "publish-newline-name",
        "publish-bad-channel",
        "publish-long-channel",
        "publish-object",
        "publish-set",
        "publish-nan",
        "publish-inf",
        "publish-nul-value",
        "publish-nul-key",
        "publish-nested-nul",
        "publish-too-big",
        "notify-too-big",
    ],
)
def test_invalid_input_raises_value_error_and_stores_nothing(open_stream, token, user, publisher, fn, args, kwargs):
    before = publisher.publish("before", {}, user_id=user)
    with pytest.raises(ValueError):
        publisher.call(fn, *args, **{"user_id": user, **kwargs})
    after = publisher.publish("after", {}, user_id=user)
    # replay everything after `before` that this user may see: only `after`
    c = open_stream(token(user), headers={"Last-Event-ID": str(before)})
    c.wait_for_id(after)
    assert delivered_ids(c, after=before) == [after]


def test_payload_just_under_the_limit_is_accepted_and_delivered(open_stream, token, user, publisher):
    c = open_stream(token(user))
    c.wait_connected()
    data = "y" * 60000
    event_id = publisher.publish("near-limit", data, user_id=user)
    assert c.wait_for_id(event_id).json() == data


@pytest.mark.parametrize("key", ["userId", "user", "channels", "event_name"])
def test_publish_many_refuses_an_unknown_key_and_broadcasts_nothing(open_stream, token, user, publisher, key):
    """An item in the HTTP shape (``userId``) or with a misspelt key was once stored as a
    broadcast: every user received an event meant for one."""
    bystander = open_stream(token(user + "-bystander"))
    bystander.wait_connected()
    with pytest.raises(ValueError, match=key):
        publisher.call("publish_many", [{"event": "ok", "data": 1}, {"event": "private", "data": 2, key: user}])
    after = publisher.publish("after", {})
    bystander.wait_for_id(after)
    assert [m.type for m in bystander.events][-1:] == ["after"]
    assert not [m for m in bystander.events if m.type in ("ok", "private")]


def test_publishing_falls_back_to_plain_statements_when_prepared_ones_vanish(open_stream, token, user, database_url):
    """Behind a pooler in transaction mode the publish INSERT prepared on one server connection
    is missing on the next: the publish still stores its event once, and the store stops preparing."""
    from sqlalchemy import create_engine

    from notifications.events import Event
    from notifications.schema import Names
    from notifications.store import EventStore

    c = open_stream(token(user))
    c.wait_connected()
    engine = create_engine(database_url, pool_size=1, max_overflow=0, isolation_level="AUTOCOMMIT")
    try:
        store = EventStore(engine, Names(), autocommit=engine)
        [first] = store.append([Event("prepared", '{"n":1}', user_id=user)])
        with engine.connect() as conn:  # the pool's one connection, where the INSERT is prepared
            assert conn.exec_driver_sql("SELECT count(*) FROM pg_prepared_statements").scalar_one() == 1
            conn.exec_driver_sql("DEALLOCATE ALL")  # what a pooler's next server connection looks like
        [second] = store.append([Event("plain", '{"n":2}', user_id=user)])
        assert store.statements.enabled is False
    finally:
        engine.dispose()
    c.wait_for_id(second)
    assert [(m.type, m.json()) for m in c.events if m.type in ("prepared", "plain")] == [
        ("prepared", {"n": 1}),
        ("plain", {"n": 2}),
    ]


def test_a_connection_lost_under_a_publish_is_replaced_not_reused(open_stream, token, user, database_url):
    """A pooled connection the server ended fails the publish it was handed to with SQLAlchemy's
    error, and is thrown away: the next publish, straight after, gets a new one and is delivered."""
    from sqlalchemy import create_engine
    from sqlalchemy.exc import DBAPIError

    from notifications.events import Event
    from notifications.schema import Names
    from notifications.store import EventStore

    c = open_stream(token(user))
    c.wait_connected()
    engine = create_engine(database_url, pool_size=1, max_overflow=0, isolation_level="AUTOCOMMIT")
    killer = create_engine(database_url, isolation_level="AUTOCOMMIT")
    try:
        store = EventStore(engine, Names(), autocommit=engine)
        [first] = store.append([Event("before", '{"n":1}', user_id=user)])
        with engine.connect() as conn:
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        with killer.connect() as conn:
            assert conn.exec_driver_sql("SELECT pg_terminate_backend(%(p)s)", {"p": pid}).scalar_one()
        with pytest.raises(DBAPIError) as lost:
            store.append([Event("lost", '{"n":2}', user_id=user)])
        assert lost.value.connection_invalidated
        [after] = store.append([Event("after", '{"n":3}', user_id=user)])
    finally:
        engine.dispose()
        killer.dispose()
    c.wait_for_id(after)
    assert [(m.type, m.json()) for m in c.events if m.type in ("before", "lost", "after")] == [
        ("before", {"n": 1}),
        ("after", {"n": 3}),
    ]
