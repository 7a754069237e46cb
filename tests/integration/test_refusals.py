"""Refused streams (README "The stream"): status 200, a long jittered ``retry:``, one ``error`` event, the end."""

from __future__ import annotations

import pytest

from tests.support.checks import assert_refused
from tests.support.tokens import mint

# 50 public channels (the service also caps this list at 50)
PUBLIC = ["news", "sports"] + [f"c{i}" for i in range(48)]


@pytest.fixture(scope="module")
def server_env():
    return {"NOTIFICATIONS_PUBLIC_CHANNELS": ",".join(PUBLIC)}


# ------------------------------------------------------------------ 401


def test_missing_token(open_stream):
    assert_refused(open_stream(), 401)


@pytest.mark.parametrize("bad", ["not-a-jwt", "a.b.c", ""], ids=["garbage", "three-dots", "empty"])
def test_malformed_token(open_stream, bad):
    assert_refused(open_stream(params={"token": bad}), 401)


def test_bad_signature(open_stream, user):
    assert_refused(open_stream(mint("some-other-secret-entirely-0123456789", user)), 401)


def test_expired_token(open_stream, token, user):
    assert_refused(open_stream(token(user, ttl=-3600)), 401)


def test_bad_bearer_header(open_stream, jwt_secret, user):
    bad = mint("wrong-secret-wrong-secret-wrong-secret", user)
    assert_refused(open_stream(headers={"Authorization": f"Bearer {bad}"}), 401)


def test_unsigned_token_is_refused(open_stream, user):
    import jwt

    unsigned = jwt.encode({"sub": user, "exp": 9999999999}, key=None, algorithm="none")
    assert_refused(open_stream(unsigned), 401)


# ------------------------------------------------------------------ 403


def test_other_users_id(open_stream, token, user):
    assert_refused(open_stream(token(user), params={"userId": "someone-else"}), 403)


def test_non_public_channel(open_stream, token, user):
    assert_refused(open_stream(token(user), params={"channels": "secret"}), 403)


def test_one_non_public_channel_among_public_ones(open_stream, token, user):
    assert_refused(open_stream(token(user), params={"channels": "news,secret,sports"}), 403)


# ------------------------------------------------------------------ 400


@pytest.mark.parametrize(
    "channels",
    ["bad name", "news,a/b", "x" * 129, ",".join([*PUBLIC, "c48"])],
    ids=["space", "slash", "too-long", "51-channels"],
)
def test_invalid_channels(open_stream, token, user, channels):
    assert_refused(open_stream(token(user), params={"channels": channels}), 400)


# ------------------------------------------------------------------ the same, accepted


def test_refusal_retry_is_jittered(open_stream):
    values = []
    for _ in range(6):
        c = open_stream()
        c.wait_closed()
        values.append(c.messages[0].retry)
    assert len(set(values)) > 1, f"refusal retry not jittered: {values}"


def test_valid_token_in_query(open_stream, token, user):
    c = open_stream(token(user))
    assert c.wait_headers() == 200
    c.wait_connected()
    assert not c.closed


def test_valid_token_in_bearer_header(open_stream, token, user):
    c = open_stream(headers={"Authorization": f"Bearer {token(user)}"})
    assert c.wait_headers() == 200
    c.wait_connected()


def test_own_user_id_and_public_channels(open_stream, token, user):
    c = open_stream(token(user), params={"userId": user, "channels": "news,sports"})
    c.wait_connected()
    fifty = open_stream(token(user), params={"channels": ",".join(PUBLIC)})
    fifty.wait_connected()


def test_empty_channels_parameter_is_fine(open_stream, token, user):
    open_stream(token(user), params={"channels": ""}).wait_connected()
