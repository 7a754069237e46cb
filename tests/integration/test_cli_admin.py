"""``flask --app app notifications migrate|prune|stats`` and the CLI's help and argument errors,
each run as its own process with ``DATABASE_URL`` and ``JWT_SECRET_KEY`` in the environment
(DESIGN §6 "CLI"). ``publish`` and ``token`` are in test_cli.py.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.support import pg
from tests.support.pg import query
from tests.support.server import ROOT, VENV_BIN, clean_environ

TABLES = {
    "notification_events",
    "notification_events_state",
    "notification_events_tickets",
    "notification_events_workers",
    "notification_events_streams",
    "notification_events_rates",
    "notification_events_alembic_version",
}


def run_cli(
    database_url: str, secret: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = clean_environ()
    full_env.update({"DATABASE_URL": database_url, "JWT_SECRET_KEY": secret, **(env or {})})
    return subprocess.run(
        [str(VENV_BIN / "flask"), "--app", "app", "notifications", *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:{result.stdout}\nstderr:{result.stderr}"
    return result.stdout


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
    # and the migrated tables work: publish through the CLI, count through stats
    event_id = ok(run_cli(fresh_database, jwt_secret, "publish", "hello", '{"n": 1}', env=no_auto)).strip()
    stats = json.loads(ok(run_cli(fresh_database, jwt_secret, "stats", env=no_auto)))
    assert stats["events"] == 1 and stats["newest_id"] == event_id, stats


# ------------------------------------------------------------------ prune


def count_events(database_url: str) -> int:
    return int(query(database_url, "SELECT count(*) FROM notification_events")[0][0])


def test_prune_without_older_than_uses_the_retention_and_keeps_recent_events(flask_cli, publisher, database_url):
    ids = [publisher.publish("recent", {"n": n}) for n in range(3)]
    out = ok(flask_cli("prune"))  # NOTIFICATIONS_RETENTION: 7d
    assert out.strip() == "0", out
    rows = query(database_url, "SELECT id FROM notification_events WHERE id = ANY(%s)", ids)
    assert sorted(r[0] for r in rows) == ids


def test_prune_older_than_zero_deletes_everything_and_prints_how_many(flask_cli, publisher, database_url):
    ids = [publisher.publish("old", {"n": n}) for n in range(5)]
    present = count_events(database_url)
    assert present >= 5
    out = ok(flask_cli("prune", "--older-than", "0"))
    assert re.fullmatch(r"\d+\n?", out), f"prune should print only the number, printed {out!r}"
    assert int(out) == present
    assert count_events(database_url) == 0
    stats = json.loads(ok(flask_cli("stats")))
    assert stats["events"] == 0 and stats["pruned_through"] == str(max(ids)), stats
    assert ok(flask_cli("prune", "--older-than", "0s")).strip() == "0"


def test_prune_older_than_a_duration_keeps_younger_events(flask_cli, publisher, database_url):
    aged = publisher.publish("aged", {})
    query(database_url, "UPDATE notification_events SET created_at = now() - interval '2 hours' WHERE id = %s", aged)
    young = publisher.publish("young", {})
    out = ok(flask_cli("prune", "--older-than", "1h"))
    assert out.strip() == "1", out
    left = {r[0] for r in query(database_url, "SELECT id FROM notification_events WHERE id = ANY(%s)", [aged, young])}
    assert left == {young}


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
