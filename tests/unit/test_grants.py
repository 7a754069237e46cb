"""Grant matching and the two authorisation checks (``notifications.auth``), without a token or a
server: README "Grants". A pattern is a channel name, ``user:<id>``, or a prefix ending in ``*``;
reading another user's events needs ``user:<id>``, a channel outside the public ones needs the
channel, publishing needs the channel, ``user:<id>``, or ``*`` (literally) for a broadcast.
Refusals are ``AccessError`` 403 naming what was refused."""

from __future__ import annotations

from typing import Any

import pytest

from notifications.auth import AccessError, Identity, authorize_publish, authorize_stream, matches
from notifications.exceptions import NotificationsError

PUBLIC = frozenset({"news", "status"})


def who(subject: str = "alice", subscribe: tuple[str, ...] = (), publish: tuple[str, ...] = ()) -> Identity:
    return Identity(subject=subject, expires_at=None, subscribe=subscribe, publish=publish)


# ---------------------------------------------------------------------------------- matches


@pytest.mark.parametrize(
    "patterns, target, expected",
    [
        (["orders"], "orders", True),
        (["orders"], "orders2", False),
        (["orders"], "order", False),
        (["orders"], "ORDERS", False),  # names are case-sensitive
        (["user:42"], "user:42", True),
        (["user:42"], "user:420", False),
        (["user:42"], "42", False),
        (["user:*"], "user:42", True),
        (["user:*"], "user:", True),  # the prefix itself
        (["user:*"], "users:42", False),
        (["user:*"], "orders", False),
        (["tenant-7:*"], "tenant-7:orders", True),
        (["tenant-7:*"], "tenant-8:orders", False),
        (["orders*"], "orders", True),
        (["orders*"], "orders.eu", True),
        (["*"], "orders", True),
        (["*"], "user:42", True),
        (["a*b"], "a*b", True),  # a star inside is no wildcard: an exact name
        (["a*b"], "axb", False),
        ([], "orders", False),
        (["billing", "user:*"], "user:7", True),
        (["billing", "user:*"], "orders", False),
    ],
)
def test_matches(patterns: list[str], target: str, expected: bool) -> None:
    assert matches(patterns, target) is expected


def test_matches_takes_any_iterable_of_patterns() -> None:
    assert matches(iter(("x", "orders")), "orders")
    assert matches((p for p in ["user:*"]), "user:1")
    assert not matches(tuple(), "orders")


# ---------------------------------------------------------------------------------- streams


@pytest.mark.parametrize(
    "subscribe, user_id, channels, reader",
    [
        ((), None, (), "alice"),  # no userId: the token's subject
        ((), "alice", (), "alice"),  # one's own id needs no grant
        ((), None, ("news", "status"), "alice"),  # public channels need no grant
        (("user:bob",), "bob", (), "bob"),
        (("user:*",), "bob", (), "bob"),
        (("user:b*",), "bob", (), "bob"),
        (("*",), "bob", ("secret",), "bob"),
        (("orders",), None, ("orders", "news"), "alice"),
        (("tenant-7:*",), None, ("tenant-7:a", "tenant-7:b"), "alice"),
        (("user:bob", "orders"), "bob", ("orders",), "bob"),
    ],
)
def test_authorize_stream_allows(
    subscribe: tuple[str, ...], user_id: str | None, channels: tuple[str, ...], reader: str
) -> None:
    assert authorize_stream(who(subscribe=subscribe), user_id, channels, PUBLIC) == reader


@pytest.mark.parametrize(
    "identity, user_id, channels, detail",
    [
        (who(), "bob", (), {"userId": "bob"}),
        (who(subscribe=("user:bo",)), "bob", (), {"userId": "bob"}),
        (who(subscribe=("user:bob",)), "bobby", (), {"userId": "bobby"}),
        (who(subscribe=("bob",)), "bob", (), {"userId": "bob"}),  # a channel grant is no user grant
        (who(publish=("*",)), "bob", (), {"userId": "bob"}),  # a publish grant is no read grant
        (who(), None, ("secret",), {"channel": "secret"}),
        (who(subscribe=("orders",)), None, ("orders", "billing"), {"channel": "billing"}),
        (who(subscribe=("tenant-7:*",)), None, ("tenant-8:a",), {"channel": "tenant-8:a"}),
        (who(publish=("secret",)), None, ("secret",), {"channel": "secret"}),
        (who(), None, ("news", "secret", "other"), {"channel": "secret"}),  # the first refused one
        (who(), "bob", ("secret",), {"userId": "bob"}),  # the user is checked first
    ],
)
def test_authorize_stream_refuses_with_403_naming_what(
    identity: Identity, user_id: str | None, channels: tuple[str, ...], detail: dict[str, str]
) -> None:
    with pytest.raises(AccessError) as refused:
        authorize_stream(identity, user_id, channels, PUBLIC)
    error = refused.value
    assert error.code == 403
    assert error.detail == detail
    (named,) = detail.values()
    assert repr(named) in error.message
    assert error.as_data() == {"error": error.message, "code": 403, **detail}


def test_public_channels_are_the_ones_given() -> None:
    assert authorize_stream(who(), None, ("orders",), frozenset({"orders"})) == "alice"
    with pytest.raises(AccessError):
        authorize_stream(who(), None, ("news",), frozenset())


# ---------------------------------------------------------------------------------- publishing


@pytest.mark.parametrize(
    "publish, user_id, channel",
    [
        (("*",), None, None),  # a broadcast needs "*"
        (("*",), "42", None),  # "*" is also a prefix of every target
        (("*",), None, "orders"),
        (("orders",), None, "orders"),
        (("ord*",), None, "orders"),
        (("user:42",), "42", None),
        (("user:*",), "42", None),
        (("orders", "user:42"), "42", "orders"),  # both targets covered
        (("tenant-7:*", "user:*"), "42", "tenant-7:orders"),
    ],
)
def test_authorize_publish_allows(publish: tuple[str, ...], user_id: str | None, channel: str | None) -> None:
    assert authorize_publish(who(publish=publish), user_id, channel) is None


@pytest.mark.parametrize(
    "identity, user_id, channel, target",
    [
        (who(), None, None, "*"),
        (who(publish=("user:*", "orders")), None, None, "*"),  # only "*" itself allows a broadcast
        (who(publish=("**",)), None, None, "*"),
        (who(subscribe=("*",)), None, None, "*"),  # a read grant is no publish grant
        (who(publish=("orders",)), None, "billing", "billing"),
        (who(publish=("tenant-7:*",)), None, "tenant-8:x", "tenant-8:x"),
        (who(publish=("user:42",)), "43", None, "user:43"),
        (who(publish=("orders",)), "42", None, "user:42"),
        (who(publish=("orders",)), "42", "orders", "user:42"),  # both targets must be covered
        (who(publish=("user:42",)), "42", "orders", "orders"),  # the channel is checked first
    ],
)
def test_authorize_publish_refuses_with_403_naming_the_target(
    identity: Identity, user_id: str | None, channel: str | None, target: str
) -> None:
    with pytest.raises(AccessError) as refused:
        authorize_publish(identity, user_id, channel)
    error = refused.value
    assert error.code == 403
    assert error.detail == {"target": target}
    assert repr(target) in error.message
    assert error.as_data() == {"error": error.message, "code": 403, "target": target}


def test_access_error_is_a_notifications_error_with_its_data() -> None:
    error = AccessError(403, "no", channel="x")
    assert isinstance(error, NotificationsError)
    assert str(error) == "no"
    data: dict[str, Any] = error.as_data()
    assert data == {"error": "no", "code": 403, "channel": "x"}
