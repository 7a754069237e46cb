"""``flask --app app notifications migrate|publish|token``, each run as its own process."""

from __future__ import annotations

import json
import re
import time

import jwt
import pytest

from tests.support.checks import assert_never_received


@pytest.fixture(scope="module")
def server_env():
    return {"NOTIFICATIONS_PUBLIC_CHANNELS": "news"}


def test_migrate_is_idempotent(flask_cli, server):
    flask_cli("migrate")


def test_publish_prints_the_id_and_reaches_live_streams(flask_cli, server, open_stream, token, user):
    clients, _ = server.open_on_all_workers(lambda i: open_stream(token(user), name=f"c{i}"), minimum=2)
    for c in clients:
        c.wait_connected()
    out = flask_cli("publish", "cli.event", json.dumps({"from": "cli", "text": "a\nb"})).stdout
    assert re.fullmatch(r"[1-9][0-9]*\n?", out), f"publish should print only the id, printed {out!r}"
    event_id = int(out)
    for c in clients:
        msg = c.wait_for_id(event_id)
        assert (msg.type, msg.json()) == ("cli.event", {"from": "cli", "text": "a\nb"})


def test_publish_to_a_user(flask_cli, server, open_stream, token, user, publisher):
    mine = open_stream(token(user), name="mine")
    other = open_stream(token(user + "-x"), name="other")
    mine.wait_connected()
    other.wait_connected()
    event_id = int(flask_cli("publish", "direct", '"hi"', "--user", user).stdout)
    sentinel = publisher.notify("tick")
    assert mine.wait_for_id(event_id).json() == "hi"
    assert_never_received(other, sentinel, [event_id])


def test_publish_to_a_channel(flask_cli, server, open_stream, token, user, publisher):
    sub = open_stream(token(user), params={"channels": "news"}, name="sub")
    plain = open_stream(token(user), name="plain")
    sub.wait_connected()
    plain.wait_connected()
    event_id = int(flask_cli("publish", "headline", "[1, 2]", "--channel", "news").stdout)
    sentinel = publisher.notify("tick")
    assert sub.wait_for_id(event_id).json() == [1, 2]
    assert_never_received(plain, sentinel, [event_id])


@pytest.mark.parametrize(
    "args",
    [("ev", "{not json"), ("bad name", "{}"), ("ev", "{}", "--channel", "bad channel"), ("ev", '"\\u0000"')],
    ids=["bad-json", "bad-event-name", "bad-channel", "nul"],
)
def test_publish_refuses_invalid_input(flask_cli, args):
    result = flask_cli("publish", *args, check=False)
    assert result.returncode != 0, result.stdout
    assert not re.fullmatch(r"[0-9]+\n?", result.stdout), "printed an id for invalid input"


def test_token_mints_a_working_jwt(flask_cli, server, jwt_secret, open_stream, publisher):
    subject = "cli-user-7"
    before = time.time()
    out = flask_cli("token", subject, "--ttl", "120").stdout.strip()
    claims = jwt.decode(out, jwt_secret, algorithms=["HS256"])
    assert claims["sub"] == subject
    assert before + 100 <= claims["exp"] <= time.time() + 125, claims
    c = open_stream(out)
    c.wait_connected()
    event_id = publisher.notify("for the cli user", user_id=subject)
    c.wait_for_id(event_id)
