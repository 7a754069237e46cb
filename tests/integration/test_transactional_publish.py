"""Publishing inside the app's own transaction (README "Publishing", "From Python"):
``session=`` (a plain SQLAlchemy ``Session``, Flask-SQLAlchemy's ``db.session``) or
``connection=`` (a Core ``Connection`` from ``engine.begin()``). The event is delivered if and
only if that transaction commits, never before the commit, and a rollback publishes nothing.

Every event is read back by a real SSE client from the module's gunicorn server; the app
transactions run in the pytest process on an engine of their own (not the extension's).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tests.support.checks import assert_never_received, delivered_ids
from tests.support.pg import query
from tests.support.publisher import api

KINDS = ["session", "connection"]


class Rollback(Exception):
    """Raised inside ``engine.begin()`` to make it roll back, as an app's error would."""


# ------------------------------------------------------------------ fixtures and helpers


@pytest.fixture(scope="module")
def engine(database_url: str, server: Any) -> Iterator[Engine]:
    """The app's own engine, and its own table, beside the extension's."""
    eng = create_engine(database_url)
    with eng.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE ledger (id serial PRIMARY KEY, ref text NOT NULL, "
                "CONSTRAINT ledger_ref_unique UNIQUE (ref) DEFERRABLE INITIALLY DEFERRED)"
            )
        )
    yield eng
    eng.dispose()


def stored(database_url: str, ids: list[int]) -> list[int]:
    rows = query(database_url, "SELECT id FROM notification_events WHERE id = ANY(%s) ORDER BY id", list(ids))
    return [r[0] for r in rows]


@contextmanager
def app_transaction(kind: str, engine: Engine) -> Iterator[tuple[dict[str, Any], Callable[[], None]]]:
    """An open app transaction: yields the publish keyword (``session=`` or ``connection=``)
    and a function that writes an app row in the same transaction. Leaving the block normally
    commits; an exception rolls back (and propagates)."""
    if kind == "session":
        with Session(engine) as s:
            with s.begin():
                yield (
                    {"session": s},
                    lambda ref="x": s.execute(text("INSERT INTO ledger (ref) VALUES (:r)"), {"r": ref}),
                )
    else:
        with engine.begin() as conn:
            yield (
                {"connection": conn},
                lambda ref="x": conn.execute(text("INSERT INTO ledger (ref) VALUES (:r)"), {"r": ref}),
            )


def ledger_refs(database_url: str, prefix: str) -> list[str]:
    return [r[0] for r in query(database_url, "SELECT ref FROM ledger WHERE ref LIKE %s ORDER BY id", prefix + "%")]


# ------------------------------------------------------------------ plain SQLAlchemy


@pytest.mark.parametrize("kind", KINDS)
def test_committed_transaction_is_delivered(kind, engine, database_url, publisher, open_stream, token, user):
    c = open_stream(token(user))
    c.wait_connected()
    with publisher.app.app_context():
        with app_transaction(kind, engine) as (joined, write):
            write(f"{user}-order")
            first = api("notify")("Order placed", notification_type="success", user_id=user, **joined)
            second = api("publish")("order.audit", {"ref": f"{user}-order"}, user_id=user, **joined)
    n1 = c.wait_for_id(first)
    assert n1.type == "notification" and n1.json()["message"] == "Order placed", n1.raw
    n2 = c.wait_for_id(second)
    assert (n2.type, n2.json()) == ("order.audit", {"ref": f"{user}-order"})
    assert delivered_ids(c) == [int(first), int(second)]
    assert ledger_refs(database_url, user) == [f"{user}-order"]


@pytest.mark.parametrize("kind", KINDS)
def test_rolled_back_transaction_is_never_delivered(kind, engine, database_url, publisher, open_stream, token, user):
    c = open_stream(token(user))
    c.wait_connected()
    lost: list[str] = []
    with publisher.app.app_context():
        with pytest.raises(Rollback):
            with app_transaction(kind, engine) as (joined, write):
                write(f"{user}-order")
                lost.append(api("notify")("Order placed", user_id=user, **joined))
                lost.append(api("broadcast_update")("order", "created", {"ref": user}, **joined))
                raise Rollback("payment declined")
    assert len(lost) == 2 and all(i.isdigit() for i in lost), lost
    marker = publisher.publish("marker", {"after": "rollback"}, user_id=user)
    assert marker > max(int(i) for i in lost)
    assert_never_received(c, marker, [int(i) for i in lost])
    # and nothing a later stream could replay either
    assert stored(database_url, [int(i) for i in lost]) == []
    assert ledger_refs(database_url, user) == []
    replay = open_stream(token(user), headers={"Last-Event-ID": "0"})
    replay.wait_for_id(marker)
    assert not {int(i) for i in lost} & set(delivered_ids(replay)), delivered_ids(replay)


def test_explicit_session_rollback_is_never_delivered(engine, database_url, publisher, open_stream, token, user):
    """``session.rollback()`` (no exception) after publishing, then the session goes on and
    commits other work: only what was published after the rollback is delivered."""
    c = open_stream(token(user))
    c.wait_connected()
    with publisher.app.app_context(), Session(engine) as s:
        dropped = api("publish")("draft", {"n": 1}, user_id=user, session=s)
        s.rollback()
        kept = api("publish")("final", {"n": 2}, user_id=user, session=s)
        s.commit()
    assert_never_received(c, int(kept), [int(dropped)])
    msg = next(m for m in c.events if m.id == kept)
    assert (msg.type, msg.json()) == ("final", {"n": 2})
    assert stored(database_url, [int(dropped), int(kept)]) == [int(kept)]


@pytest.mark.parametrize("kind", KINDS)
def test_a_commit_that_fails_delivers_nothing(kind, engine, database_url, publisher, open_stream, token, user):
    """A deferred constraint fails at COMMIT, after the publish: the event must not exist."""
    c = open_stream(token(user))
    c.wait_connected()
    lost: list[str] = []
    with publisher.app.app_context():
        with pytest.raises(IntegrityError):
            with app_transaction(kind, engine) as (joined, write):
                write(f"{user}-dup")
                write(f"{user}-dup")  # violates the deferred unique constraint at commit
                lost.append(api("notify")("Order placed", user_id=user, **joined))
    marker = publisher.publish("marker", {}, user_id=user)
    assert_never_received(c, marker, [int(lost[0])])
    assert stored(database_url, [int(lost[0])]) == []


@pytest.mark.parametrize("kind", KINDS)
def test_open_transaction_is_not_seen_until_commit(kind, engine, database_url, publisher, open_stream, token, user):
    """While the app transaction that published A is open: no stream receives A (live or by
    replay), and a publish from elsewhere (B) neither waits for it nor is held back: B returns at
    once and is delivered. After the commit A arrives too, after B and with a higher id."""
    live = open_stream(token(user), name="live")
    live.wait_connected()
    before = publisher.publish("before", {}, user_id=user)
    live.wait_for_id(before)

    with publisher.app.app_context():
        with app_transaction(kind, engine) as (joined, write):
            write(f"{user}-open")
            api("publish")("inside", {"from": "transaction"}, user_id=user, **joined)
            started = time.monotonic()
            second = publisher.publish("other", {"from": "elsewhere"}, user_id=user)
            assert time.monotonic() - started < 1.0, "the other publish waited for the open transaction"
            live.wait_for_id(second, timeout=2)
            # A stream that replays from `before` gets B and nothing else either.
            replay = open_stream(token(user), headers={"Last-Event-ID": str(before)}, name="replay")
            replay.wait_for_id(second)
            replay.seek_end()
            replay.wait_for_event("heartbeat", timeout=5)
            for c in (live, replay):
                assert delivered_ids(c, after=before) == [second], "an uncommitted event was delivered"
    first = live.wait_for_event("inside").int_id
    assert first > second, (first, second)
    assert delivered_ids(live, after=before) == [second, first]
    replay.wait_for_id(first)
    assert delivered_ids(replay, after=before) == [second, first]
    assert ledger_refs(database_url, f"{user}-open") == [f"{user}-open"]


# ------------------------------------------------------------------ Flask-SQLAlchemy: the README's route


@dataclass
class Shop:
    app: Any
    attempts: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture(scope="module")
def shop(database_url: str, jwt_secret: str, server: Any) -> Iterator[Shop]:
    """A host Flask app (not app.py) with Flask-SQLAlchemy, an Order model and the README's
    ``POST /api/orders`` route, verbatim but for a switch that makes it fail before the commit."""
    from flask import Flask, request
    from flask_jwt_extended import get_jwt_identity, jwt_required
    from flask_sqlalchemy import SQLAlchemy
    from sqlalchemy.orm import DeclarativeBase

    from notifications import Notifications, broadcast_update, notify

    class Base(DeclarativeBase):
        pass

    db = SQLAlchemy(model_class=Base)

    class Order(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "shop_orders"
        id = db.Column(db.Integer, primary_key=True)
        customer_id = db.Column(db.Text, nullable=False)
        total = db.Column(db.Integer, nullable=False)

    app = Flask("shop")
    app.config.update(
        SQLALCHEMY_DATABASE_URI=database_url,
        DATABASE_URL=database_url,
        JWT_SECRET_KEY=jwt_secret,
        NOTIFICATIONS_AUTO_MIGRATE=False,  # the module's server migrated this database
    )
    db.init_app(app)
    Notifications(app)
    shop = Shop(app)

    class Declined(Exception):
        pass

    @app.post("/api/orders")
    @jwt_required()
    def create_order():  # type: ignore[no-untyped-def]
        order = Order(customer_id=get_jwt_identity(), total=request.json["total"])
        db.session.add(order)
        db.session.flush()  # order.id is known
        attempt: dict[str, Any] = {"order": order.id}
        shop.attempts.append(attempt)
        attempt["notification"] = notify(
            f"Order #{order.id} created", notification_type="success", user_id=get_jwt_identity(), session=db.session
        )
        attempt["update"] = broadcast_update(
            "order", "created", {"id": order.id, "total": order.total}, channel="orders", session=db.session
        )
        if request.json.get("decline"):
            raise Declined("the payment was declined")  # Flask-SQLAlchemy's teardown rolls back
        db.session.commit()  # the order and both events, or nothing
        return {"id": order.id}, 201

    with app.app_context():
        db.create_all()
    yield shop
    with app.app_context():
        db.engine.dispose()


def orders_of(database_url: str, customer: str) -> list[int]:
    return [r[0] for r in query(database_url, "SELECT id FROM shop_orders WHERE customer_id = %s", customer)]


def test_readme_order_route_commit_delivers_both_events(shop, database_url, open_stream, token, user):
    c = open_stream(token(user, notifications={"subscribe": ["orders"]}), params={"channels": "orders"})
    c.wait_connected()
    r = shop.app.test_client().post(
        "/api/orders", json={"total": 42}, headers={"Authorization": f"Bearer {token(user)}"}
    )
    assert r.status_code == 201, r.get_data(as_text=True)
    order_id = r.get_json()["id"]
    attempt = shop.attempts[-1]
    assert attempt["order"] == order_id
    note = c.wait_for_id(attempt["notification"])
    assert note.type == "notification"
    assert note.json() == {
        "type": "notification",
        "notificationType": "success",
        "message": f"Order #{order_id} created",
        "duration": 5000,
    }
    update = c.wait_for_id(attempt["update"])
    assert update.type == "update"
    assert update.json() == {
        "type": "update",
        "entity": "order",
        "action": "created",
        "payload": {"id": order_id, "total": 42},
    }
    assert delivered_ids(c) == [int(attempt["notification"]), int(attempt["update"])]
    assert orders_of(database_url, user) == [order_id]


def test_readme_order_route_failure_delivers_neither_event(shop, database_url, publisher, open_stream, token, user):
    c = open_stream(token(user, notifications={"subscribe": ["orders"]}), params={"channels": "orders"})
    c.wait_connected()
    shop.app.testing = False  # a real app: an exception is a 500 and the app context tears down
    r = shop.app.test_client().post(
        "/api/orders", json={"total": 7, "decline": True}, headers={"Authorization": f"Bearer {token(user)}"}
    )
    assert r.status_code == 500, r.get_data(as_text=True)
    attempt = shop.attempts[-1]
    lost = [int(attempt["notification"]), int(attempt["update"])]
    # the session was rolled back: the publish lock is free again and the next publish goes through
    marker = publisher.publish("marker", {}, user_id=user)
    assert_never_received(c, marker, lost)
    assert stored(database_url, lost) == []
    assert orders_of(database_url, user) == []
    # the app keeps working afterwards
    ok = shop.app.test_client().post(
        "/api/orders", json={"total": 8}, headers={"Authorization": f"Bearer {token(user)}"}
    )
    assert ok.status_code == 201, ok.get_data(as_text=True)
    c.wait_for_id(shop.attempts[-1]["update"])
    assert delivered_ids(c, after=marker) == [int(shop.attempts[-1]["notification"]), int(shop.attempts[-1]["update"])]
