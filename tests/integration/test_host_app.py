"""The extension in a host Flask app of its own (not app.py), with its own engine, tables and
Alembic (README "In your own Flask app"): the extension's own migrations beside the host's
tables, ``define_tables`` on the host's metadata, and ``NOTIFICATIONS_TABLE`` /
``NOTIFICATIONS_SCHEMA`` honoured by a real gunicorn server.

This module's server runs with a custom table and schema, so nothing here ever creates the
default ``notification_events`` table.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, create_engine, insert, text

from notifications.extension import get_state
from notifications.schema import Names, define_tables
from tests.support.pg import query
from tests.support.publisher import Publisher, api
from tests.support.tokens import mint

SERVER_NAMES = {"NOTIFICATIONS_TABLE": "svc_events", "NOTIFICATIONS_SCHEMA": "svc"}
SUFFIXES = (
    "",
    "_state",
    "_tickets",
    "_workers",
    "_streams",
    "_rates",
    "_revocations",
    "_inbox",
    "_inbox_marks",
    "_inbox_cursors",
    "_inbox_targets",
    "_queue",
)


@pytest.fixture(scope="module")
def server_env() -> dict[str, str]:
    return dict(SERVER_NAMES)


@pytest.fixture(scope="module")
def publisher(database_url: str, jwt_secret: str) -> Publisher:
    """The module's publisher writes where its server reads: the custom table and schema."""
    return Publisher(database_url, jwt_secret, **SERVER_NAMES)


@pytest.fixture(scope="module")
def engine(database_url: str) -> Iterator[Engine]:
    eng = create_engine(database_url)
    yield eng
    eng.dispose()


def tables_in(database_url: str, schema: str) -> set[str]:
    rows = query(database_url, "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", schema)
    return {r[0] for r in rows}


def head_revision() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from notifications.migrate import migrations_dir

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head
    return head


def host_app(database_url: str, secret: str, **config: Any) -> Flask:
    from notifications import Notifications

    app = Flask("host")
    app.config.update(DATABASE_URL=database_url, JWT_SECRET_KEY=secret, NOTIFICATIONS_AUTO_MIGRATE=False, **config)
    Notifications(app)
    return app


# ------------------------------------------------------------------ (a) the extension's own migrations


def test_own_migrations_create_the_tables_beside_the_hosts(engine, database_url, jwt_secret):
    from notifications.migrate import upgrade

    host = MetaData()
    invoices = Table("invoices", host, Column("id", Integer, primary_key=True), Column("ref", String(20)))
    host.create_all(engine)
    with engine.begin() as conn:
        # the host's own Alembic bookkeeping
        conn.execute(text("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)"))
        conn.execute(text("INSERT INTO alembic_version VALUES ('host_0042')"))
        conn.execute(insert(invoices).values(ref="INV-1"))

    app = host_app(database_url, jwt_secret, NOTIFICATIONS_TABLE="host_events")
    created = {f"host_events{s}" for s in SUFFIXES} | {"host_events_alembic_version"}
    assert not created & tables_in(database_url, "public"), "NOTIFICATIONS_AUTO_MIGRATE=false still migrated"

    names = Names(table="host_events")
    upgrade(engine, names)
    upgrade(engine, names)  # again: nothing to do, no error
    public = tables_in(database_url, "public")
    assert created <= public, sorted(public)
    assert "notification_events" not in public
    assert query(database_url, "SELECT version_num FROM host_events_alembic_version") == [(head_revision(),)]
    assert query(database_url, "SELECT version_num FROM alembic_version") == [("host_0042",)]
    assert query(database_url, "SELECT ref FROM invoices") == [("INV-1",)]

    # the host publishes in its own transaction, next to its own row
    with app.app_context(), engine.begin() as conn:
        conn.execute(insert(invoices).values(ref="INV-2"))
        event_id = api("notify")("Invoice INV-2 issued", user_id="accountant", connection=conn)
    with app.app_context():
        assert get_state().sequencer.deliver_now() == 1  # no server runs here: deliver it now
    rows = query(database_url, "SELECT id, event, data, user_id FROM host_events")
    assert rows == [(int(event_id), "notification", rows[0][2], "accountant")], rows
    assert rows[0][2]["message"] == "Invoice INV-2 issued"


# ------------------------------------------------------------------ (b) define_tables on the host's metadata


def test_define_tables_declares_every_table_on_the_host_metadata():
    metadata = MetaData()
    Table("accounts", metadata, Column("id", Integer, primary_key=True))
    tables = define_tables(metadata, Names(table="app_events", schema="notif"))
    assert set(metadata.tables) == {"accounts"} | {f"notif.app_events{s}" for s in SUFFIXES}
    for suffix in SUFFIXES:
        table = metadata.tables[f"notif.app_events{suffix}"]
        assert table.schema == "notif" and table.name == f"app_events{suffix}"
    events = tables.events
    assert events is metadata.tables["notif.app_events"]
    assert [c.name for c in events.columns] == ["id", "event", "data", "user_id", "channel", "created_at"]
    assert [c.name for c in events.primary_key] == ["id"]
    assert {c.name for c in events.columns if not c.nullable} == {"id", "event", "data", "created_at"}
    assert events.c.data.type.__class__.__name__ == "JSONB"
    assert events.c.created_at.type.timezone is True
    assert {i.name for i in events.indexes} == {"ix_app_events_created_at"}
    assert tables.state is metadata.tables["notif.app_events_state"]


def test_define_tables_with_create_all_serves_an_app_configured_with_those_names(engine, database_url, jwt_secret):
    metadata = MetaData()
    accounts = Table("accounts", metadata, Column("id", Integer, primary_key=True), Column("name", String(40)))
    define_tables(metadata, Names(table="app_events", schema="notif"))
    with engine.begin() as conn:
        conn.execute(text("CREATE SCHEMA notif"))
    metadata.create_all(engine)
    assert tables_in(database_url, "notif") == {f"app_events{s}" for s in SUFFIXES}

    app = host_app(database_url, jwt_secret, NOTIFICATIONS_TABLE="app_events", NOTIFICATIONS_SCHEMA="notif")

    with app.app_context():
        with engine.begin() as conn:
            conn.execute(insert(accounts).values(name="ada"))
            first = api("notify")("Welcome, ada", notification_type="success", user_id="ada", connection=conn)
        second = api("broadcast_update")("account", "created", {"name": "ada"}, channel="accounts")
        batch = api("publish_many")([{"event": "a", "data": 1}, {"event": "b", "data": [2], "user_id": "ada"}])
        assert get_state().sequencer.deliver_now() == 4  # no server runs here: deliver them now
        store = get_state().store
        with store.engine.connect() as conn:
            read = store.read_since(conn, 0)
        stats = store.stats()
    ids = [int(first), int(second), *(int(i) for i in batch)]
    assert [e.id for e in read] == ids == sorted(ids)
    assert [(e.name, json.loads(e.data), e.user_id, e.channel) for e in read] == [
        (
            "notification",
            {"type": "notification", "notificationType": "success", "message": "Welcome, ada", "duration": 5000},
            "ada",
            None,
        ),
        (
            "update",
            {"type": "update", "entity": "account", "action": "created", "payload": {"name": "ada"}},
            None,
            "accounts",
        ),
        ("a", 1, None, None),
        ("b", [2], "ada", None),
    ]
    assert stats["events"] == 4 and stats["newest_id"] == str(ids[-1]), stats

    # the HTTP publish endpoint of that app writes there too
    tok = mint(jwt_secret, "svc", notifications={"publish": ["*"]})
    r = app.test_client().post(
        "/api/notifications/publish", json={"event": "http", "data": {}}, headers={"Authorization": f"Bearer {tok}"}
    )
    assert r.status_code == 201, r.get_data(as_text=True)
    assert query(database_url, "SELECT event FROM notif.app_events_queue WHERE id = %s", int(r.get_json()["id"])) == [
        ("http",)
    ]
    assert "app_events_alembic_version" not in tables_in(database_url, "notif")
    assert not {f"app_events{s}" for s in SUFFIXES} & tables_in(database_url, "public")


def test_define_tables_matches_what_the_migrations_create(engine):
    """A host that autogenerates its migrations from ``define_tables`` gets the same tables the
    extension's own migrations create: autogenerate finds no difference."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from notifications.migrate import upgrade

    names = Names(table="cmp_events", schema="cmp")
    upgrade(engine, names)
    metadata = MetaData()
    define_tables(metadata, names)
    wanted = {f"cmp_events{s}" for s in SUFFIXES}

    def include_name(name: str | None, type_: str, parent_names: dict[str, Any]) -> bool:
        if type_ == "schema":
            return name == "cmp"
        if type_ == "table":
            return name in wanted
        return True

    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"include_schemas": True, "include_name": include_name, "compare_type": True}
        )
        diff = compare_metadata(context, metadata)
    assert diff == [], f"define_tables and the migrations disagree: {diff}"


# ------------------------------------------------------------------ a gunicorn server on a custom table and schema


def test_server_with_custom_table_and_schema_delivers(server, database_url, publisher, open_stream, token, user):
    c = open_stream(token(user))
    c.wait_connected()
    event_id = publisher.notify("in a schema of its own", user_id=user)
    msg = c.wait_for_id(event_id)
    assert msg.json()["message"] == "in a schema of its own"
    assert query(database_url, "SELECT event, user_id FROM svc.svc_events WHERE id = %s", event_id) == [
        ("notification", user)
    ]
    assert {f"svc_events{s}" for s in SUFFIXES} | {"svc_events_alembic_version"} <= tables_in(database_url, "svc")
    assert "notification_events" not in tables_in(database_url, "public")
    # a reconnecting stream replays from that table
    again = open_stream(token(user), headers={"Last-Event-ID": str(event_id - 1)})
    assert again.wait_for_id(event_id).json()["message"] == "in a schema of its own"


def test_two_tables_in_one_database_do_not_cross(
    server, engine, database_url, jwt_secret, publisher, open_stream, token, user
):
    """An app on another table of the same database publishes on its own NOTIFY channel and
    table: the server (svc.svc_events) never delivers it."""
    from notifications.migrate import upgrade

    upgrade(engine, Names(table="other_events", schema="svc"))
    c = open_stream(token(user))
    c.wait_connected()
    other = Publisher(database_url, jwt_secret, NOTIFICATIONS_TABLE="other_events", NOTIFICATIONS_SCHEMA="svc")
    stray = other.notify("wrong table", user_id=user)
    assert query(database_url, "SELECT count(*) FROM svc.other_events_queue WHERE id = %s", stray) == [(1,)]
    marker = publisher.notify("right table", user_id=user)
    got = c.wait_for_id(marker)
    assert got.json()["message"] == "right table"
    assert not [m for m in c.events if m.type == "notification" and m.json().get("message") == "wrong table"]
