"""``NOTIFICATIONS_HTTP_ERRORS=true``: the same refusal body, with the real status code."""

from __future__ import annotations

import pytest

from tests.support.checks import assert_refused
from tests.support.tokens import mint


@pytest.fixture(scope="module")
def server_env():
    return {"NOTIFICATIONS_HTTP_ERRORS": "true", "NOTIFICATIONS_PUBLIC_CHANNELS": "news"}


def test_missing_token_is_401(open_stream):
    assert_refused(open_stream(), 401, status=401)


def test_expired_token_is_401(open_stream, token, user):
    assert_refused(open_stream(token(user, ttl=-60)), 401, status=401)


def test_bad_signature_is_401(open_stream, user):
    assert_refused(open_stream(mint("another-secret-another-secret-xx", user)), 401, status=401)


def test_other_user_is_403(open_stream, token, user):
    assert_refused(open_stream(token(user), params={"userId": "mallory"}), 403, status=403)


def test_private_channel_is_403(open_stream, token, user):
    assert_refused(open_stream(token(user), params={"channels": "private"}), 403, status=403)


def test_bad_channel_is_400(open_stream, token, user):
    assert_refused(open_stream(token(user), params={"channels": "no spaces"}), 400, status=400)


def test_accepted_stream_is_still_200(open_stream, token, user):
    c = open_stream(token(user), params={"channels": "news"})
    assert c.wait_headers() == 200
    c.wait_connected()
