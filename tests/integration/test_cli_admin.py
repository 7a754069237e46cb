"""``flask --app app notifications migrate|prune|stats`` and the CLI's help and argument errors,
each run as its own process with ``DATABASE_URL`` and ``JWT_SECRET_KEY`` in the environment
(README "From the command line"). ``publish`` and ``token`` are in test_cli.py.

``prune`` runs the automatic pruner's path: under the cluster-wide pruning lock (waiting for a
process that holds it), and it also deletes stale rows of the limit tables. The module's server
prunes only once an hour, so what the tests see deleted is the command's doing.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg2
import pytest

from notifications.extension import get_state
from notifications.locks import prune_key
from tests.support import pg
from tests.support.checks import wait_until
from tests.support.pg import query
from tests.support.server import ROOT, VENV_BIN, clean_environ

TABLES = {
    "notification_events",
    "notification_events_state",
    "notification_events_tickets",
    "notification_events_workers",
    "notification_events_streams",
    "notification_events_rates",
    "notification_events_revocations",
    "notification_events_inbox",
    "notification_events_inbox_marks",
    "notification_events_inbox_cursors",
    "notification_events_inbox_targets",
    "notification_events_queue",
    "notification_events_alembic_version",
}


def cli_command(
    database_url: str, secret: str, *args: str, env: dict[str, str] | None = None
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of ``flask --app app notifications <args>``."""
    full_env = clean_environ()
    full_env.update({"DATABASE_URL": database_url, "JWT_SECRET_KEY": secret, **(env or {})})
    return [str(VENV_BIN / "flask"), "--app", "app", "notifications", *args], full_env


def run_cli(
    database_url: str, secret: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    cmd, full_env = cli_command(database_url, secret, *args, env=env)
    return subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=60)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:{result.stdout}\nstderr:{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def server_env() -> dict[str, str]:
    return {"NOTIFICATIONS_PRUNE_INTERVAL": "1h"}  # the server's own pruner stays out of the way


@pytest.fixture(scope="module")
def flask_cli(database_url: str, jwt_secret: str) -> Any:
    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return run_cli(database_url, jwt_secret, *args, env=env)

    return run


def tables(database_url: str) -> set[str]:
    rows = query(database_url, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
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


# ------------------------------------------------------------------ migrate


@pytest.fixture
def fresh_database(pg_admin_url: str) -> Iterator[str]:
    url = pg.create_database(pg_admin_url, "t_cli_fresh")
    yield url
    pg.drop_database(pg_admin_url, url)


def test_migrate_creates_the_tables_on_a_fresh_database_and_can_run_again(fresh_database, jwt_secret):
    no_auto = {"NOTIFICATIONS_AUTO_MIGRATE": "false"}  # so that only the command creates them
    assert tables(fresh_database) == set()
    out = ok(run_cli(fresh_database, jwt_secret, "migrate", env=no_auto))
    assert out.strip(), "migrate printed nothing"
    assert tables(fresh_database) == TABLES
    version = query(fresh_database, "SELECT version_num FROM notification_events_alembic_version")
    assert version == [(head_revision(),)]
    assert "alembic_version" not in tables(fresh_database), "the host's own version table must stay untouched"

    ok(run_cli(fresh_database, jwt_secret, "migrate", env=no_auto))
    assert tables(fresh_database) == TABLES
    assert query(fresh_database, "SELECT version_num FROM notification_events_alembic_version") == version
    # and the migrated tables work: publish through the CLI, count through stats (no service runs
    # on this database, so the event waits in the publish queue for a sequencer)
    ok(run_cli(fresh_database, jwt_secret, "publish", "hello", '{"n": 1}', env=no_auto))
    stats = json.loads(ok(run_cli(fresh_database, jwt_secret, "stats", env=no_auto)))
    assert stats["queued"] == 1 and stats["events"] == 0 and stats["newest_id"] is None, stats


# ------------------------------------------------------------------ prune


def count_events(database_url: str) -> int:
    return int(query(database_url, "SELECT count(*) FROM notification_events")[0][0])


def test_prune_without_older_than_uses_the_retention_and_keeps_recent_events(
    flask_cli, publisher, database_url, server
):
    ids = [publisher.publish("recent", {"n": n}) for n in range(3)]
    publisher.stored(ids)
    out = ok(flask_cli("prune"))  # NOTIFICATIONS_RETENTION: 7d
    assert out.strip() == "0", out
    rows = query(database_url, "SELECT id FROM notification_events WHERE id = ANY(%s)", ids)
    assert sorted(r[0] for r in rows) == ids


def test_prune_older_than_zero_deletes_everything_and_prints_how_many(flask_cli, publisher, database_url, server):
    ids = [publisher.publish("old", {"n": n}) for n in range(5)]
    publisher.stored(ids)
    present = count_events(database_url)
    assert present >= 5
    out = ok(flask_cli("prune", "--older-than", "0"))
    assert re.fullmatch(r"\d+\n?", out), f"prune should print only the number, printed {out!r}"
    assert int(out) == present
    assert count_events(database_url) == 0
    stats = json.loads(ok(flask_cli("stats")))
    assert stats["events"] == 0 and stats["pruned_through"] == str(max(ids)), stats
    assert ok(flask_cli("prune", "--older-than", "0s")).strip() == "0"


def test_prune_older_than_a_duration_keeps_younger_events(flask_cli, publisher, database_url, server):
    aged = publisher.publish("aged", {})
    publisher.stored([aged])
    query(database_url, "UPDATE notification_events SET created_at = now() - interval '2 hours' WHERE id = %s", aged)
    young = publisher.publish("young", {})
    publisher.stored([young])
    out = ok(flask_cli("prune", "--older-than", "1h"))
    assert out.strip() == "1", out
    left = {r[0] for r in query(database_url, "SELECT id FROM notification_events WHERE id = ANY(%s)", [aged, young])}
    assert left == {young}


def limit_rows(database_url: str, tag: str) -> dict[str, list[tuple[object, ...]]]:
    """The rows of the limit tables whose worker or key contains ``tag``."""
    like = f"%{tag}%"
    t = "notification_events"
    return {
        "workers": query(database_url, f"SELECT worker FROM {t}_workers WHERE worker LIKE %s ORDER BY 1", like),
        "streams": query(
            database_url, f"SELECT worker, user_id FROM {t}_streams WHERE worker LIKE %s ORDER BY 1", like
        ),
        "rates": query(database_url, f"SELECT key FROM {t}_rates WHERE key LIKE %s ORDER BY 1", like),
    }


def test_prune_deletes_stale_limit_rows_and_keeps_live_ones(flask_cli, publisher, database_url):
    """A worker last seen an hour ago (its lease long lapsed) and its stream, and a rate window
    from more than two days ago, are deleted; a worker seen now, its stream and the current
    window stay. (``publisher``: its app migrated the database.)"""
    tag = secrets.token_hex(4)
    stale, live = f"stale-{tag}", f"live-{tag}"
    now = int(time.time())
    query(
        database_url,
        "INSERT INTO notification_events_workers (worker, seen_at) VALUES (%s, now() - interval '1 hour'), (%s, now())",
        stale,
        live,
    )
    query(
        database_url,
        "INSERT INTO notification_events_streams (user_id, worker) VALUES (%s, %s), (%s, %s)",
        f"user-{stale}",
        stale,
        f"user-{live}",
        live,
    )
    query(
        database_url,
        'INSERT INTO notification_events_rates (key, "window", count) VALUES (%s, %s, 7), (%s, %s, 2)',
        f"user:{stale}",
        now - 2 * 86400 - 120,
        f"user:{live}",
        now - now % 60,
    )
    assert limit_rows(database_url, stale) == {
        "workers": [(stale,)],
        "streams": [(stale, f"user-{stale}")],
        "rates": [(f"user:{stale}",)],
    }
    try:
        out = ok(flask_cli("prune"))
        assert re.fullmatch(r"\d+\n?", out), f"prune should print only the number, printed {out!r}"
        assert limit_rows(database_url, stale) == {"workers": [], "streams": [], "rates": []}
        assert limit_rows(database_url, live) == {
            "workers": [(live,)],
            "streams": [(live, f"user-{live}")],
            "rates": [(f"user:{live}",)],
        }
    finally:
        query(database_url, "DELETE FROM notification_events_streams WHERE worker LIKE %s", f"%{tag}%")
        query(database_url, "DELETE FROM notification_events_workers WHERE worker LIKE %s", f"%{tag}%")
        query(database_url, "DELETE FROM notification_events_rates WHERE key LIKE %s", f"%{tag}%")


def waiting_for_advisory_lock(database_url: str, key: int) -> int:
    """How many sessions of this database wait for the advisory lock ``key`` (bigint form)."""
    rows = query(
        database_url,
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
        "AND ((classid::bigint << 32) | objid::bigint) = %s",
        key & 0xFFFFFFFFFFFFFFFF,
    )
    return int(rows[0][0])


def test_prune_waits_for_the_pruning_lock_held_elsewhere(publisher, database_url, jwt_secret, server):
    """While another session holds the cluster-wide pruning lock, ``prune`` waits for it (its
    session is seen waiting in pg_locks, the process still runs, nothing is deleted); once the
    lock is released it prunes and prints how many events."""
    ids = [publisher.publish("locked", {"n": n}) for n in range(3)]
    publisher.stored(ids)
    with publisher.app.app_context():
        key = prune_key(get_state().names)
    holder = psycopg2.connect(pg.libpq_url(database_url))
    proc: subprocess.Popen[str] | None = None
    try:
        holder.autocommit = True
        with holder.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (key,))
        present = count_events(database_url)
        cmd, env = cli_command(database_url, jwt_secret, "prune", "--older-than", "0")
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def blocked() -> bool:
            if proc.poll() is not None:
                out, err = proc.communicate()
                raise AssertionError(
                    f"prune ended (exit {proc.returncode}) while another session held the pruning lock\n"
                    f"stdout:{out}\nstderr:{err}"
                )
            return waiting_for_advisory_lock(database_url, key) == 1

        wait_until(blocked, 30, "the prune command waiting for the pruning lock")
        assert proc.poll() is None
        assert count_events(database_url) == present, "prune deleted events without the lock"
        assert set(ids) <= {r[0] for r in query(database_url, "SELECT id FROM notification_events")}

        with holder.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(%s)", (key,))
            assert cur.fetchone() == (True,)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:{out}\nstderr:{err}"
        assert re.fullmatch(r"\d+\n?", out), f"prune should print only the number, printed {out!r}"
        assert int(out) == present
        assert count_events(database_url) == 0
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.communicate()
        holder.close()


# ------------------------------------------------------------------ stats


def test_stats_prints_json_counts_matching_the_table(
    flask_cli, server, publisher, database_url, open_stream, token, user
):
    streams = [open_stream(token(user), name=f"s{i}") for i in range(2)]
    for s in streams:
        s.wait_connected()
    publisher.publish("counted", {})
    publisher.publish("counted", {})
    out = ok(flask_cli("stats"))
    stats = json.loads(out)
    assert {"events", "oldest_id", "newest_id", "pruned_through", "open_streams"} <= set(stats), stats
    count, oldest, newest = query(database_url, "SELECT count(*), min(id), max(id) FROM notification_events")[0]
    assert stats["events"] == count
    assert stats["oldest_id"] == str(oldest) and stats["newest_id"] == str(newest), stats
    assert isinstance(stats["pruned_through"], str) and stats["pruned_through"].isdigit(), stats
    assert int(stats["pruned_through"]) < int(oldest), stats
    assert isinstance(stats["open_streams"], int) and stats["open_streams"] >= len(streams), stats


# ------------------------------------------------------------------ help and argument errors


HELP = {
    (): ["publish", "token", "prune", "migrate", "stats"],
    ("publish",): ["EVENT", "DATA_JSON", "--user", "--channel"],
    ("token",): ["SUBJECT", "--subscribe", "--publish", "--ttl"],
    ("prune",): ["--older-than"],
    ("migrate",): [],
    ("stats",): [],
}


def test_help_of_every_command(flask_cli):
    with ThreadPoolExecutor(len(HELP)) as pool:
        results = dict(zip(HELP, pool.map(lambda cmd: flask_cli(*cmd, "--help"), HELP), strict=True))
    for cmd, result in results.items():
        out = ok(result)
        assert "Usage:" in out, (cmd, out)
        for word in HELP[cmd]:
            assert word in out, f"`notifications {' '.join(cmd)} --help` does not mention {word}:\n{out}"


BAD_ARGS = {
    "publish-not-json": (("publish", "x", "notjson"), ["DATA_JSON", "JSON"]),
    "publish-missing-data": (("publish", "x"), ["DATA_JSON"]),
    "publish-bad-event": (("publish", "bad name", "{}"), ["event name"]),
    "publish-unknown-option": (("publish", "x", "{}", "--users", "u"), ["--users"]),
    "prune-nonsense": (("prune", "--older-than", "nonsense"), ["nonsense"]),
    "prune-negative": (("prune", "--older-than", "-5s"), ["-5s"]),
    "token-bad-ttl": (("token", "bob", "--ttl", "forever"), ["forever"]),
    "token-missing-subject": (("token",), ["SUBJECT"]),
    "stats-extra": (("stats", "now"), ["now"]),
    "unknown-command": (("purge",), ["purge"]),
}


def test_bad_arguments_give_a_clear_error_and_a_non_zero_exit(flask_cli, database_url):
    before = count_events(database_url)
    with ThreadPoolExecutor(len(BAD_ARGS)) as pool:
        results = dict(zip(BAD_ARGS, pool.map(lambda case: flask_cli(*case[0]), BAD_ARGS.values()), strict=True))
    problems = []
    for name, result in results.items():
        words = BAD_ARGS[name][1]
        text = result.stderr
        if result.returncode == 0:
            problems.append(f"{name}: exit 0, stdout {result.stdout!r}")
        elif "Traceback" in text:
            problems.append(f"{name}: a traceback instead of an error message:\n{text}")
        elif "Error" not in text or not all(w in text for w in words):
            problems.append(f"{name}: the error does not name {words}:\n{text}")
        elif result.stdout.strip():
            problems.append(f"{name}: printed {result.stdout!r} on stdout")
    assert not problems, "\n".join(problems)
    assert count_events(database_url) == before, "a refused command changed the events table"
