"""Which tokens a revocation voids (``control.Revocations``, the per-worker copy): those issued
in an earlier second than the revocation, and those without ``iat``; never a newer token, never
the host app's own login (the ``identity=`` hook), never another user's. And how a control
message heard by the listener ends exactly that user's streams (``control.handle``)."""

from __future__ import annotations

import json

import pytest

from notifications.auth import AccessError, Identity
from notifications.control import Revocations, handle
from notifications.fanout import Hub
from notifications.transport import Subscriber

AT = 1_800_000_000.4  # a revocation at .4 of a second


def revocations() -> Revocations:
    found = Revocations(engine=None, names=None, current=lambda: True)  # type: ignore[arg-type]
    found.note("alice", AT)
    return found


def token(subject: str = "alice", issued_at: float | None = AT - 10) -> Identity:
    return Identity(subject, AT + 3600, token=True, issued_at=issued_at)


@pytest.mark.parametrize(
    "identity, revoked",
    [
        (token(issued_at=AT - 10), True),
        (token(issued_at=AT - 1), True),
        (token(issued_at=None), True),  # no iat: cannot be newer
        (token(issued_at=AT - 0.4), False),  # iat has whole seconds: issued in the revocation's own second
        (token(issued_at=AT + 1), False),
        (token("bob"), False),
        (Identity("alice", None), False),  # the host app's own login, not a token
    ],
)
def test_a_revocation_voids_the_older_tokens_of_its_user_only(identity, revoked):
    assert revocations().revoked(identity) is revoked


def test_check_answers_401_token_revoked():
    with pytest.raises(AccessError) as raised:
        revocations().check(token())
    assert raised.value.as_data() == {"error": "token revoked", "code": 401}


def test_a_later_revocation_wins_and_an_earlier_one_heard_late_does_not_undo_it():
    found = revocations()
    found.note("alice", AT + 100)
    assert found.revoked(token(issued_at=AT + 50))
    found.note("alice", AT)
    assert found.revoked(token(issued_at=AT + 50))


def _streams(hub: Hub, *owners: str) -> list[Subscriber]:
    hub.start(0)
    subs = [Subscriber(reader, (), 10, subject=subject) for subject, reader in (o.split("/") for o in owners)]
    for sub in subs:
        hub.subscribe(sub)
    return subs


def test_a_disconnect_ends_the_streams_the_user_opened_with_the_reason():
    hub = Hub()
    mine, as_support, other = _streams(hub, "alice/alice", "alice/bob", "bob/bob")
    handle(json.dumps({"op": "disconnect", "user": "alice", "reason": "bye"}), hub, revocations())
    assert mine.closed == as_support.closed == "disconnected"
    assert other.closed is None
    assert mine.queue == [b'event: error\ndata: {"error":"disconnected","code":401,"reason":"bye"}\n\n']


def test_a_revoke_message_updates_the_copy_and_ends_the_streams():
    hub, found = Hub(), revocations()
    (mine,) = _streams(hub, "carol/carol")
    handle(json.dumps({"op": "revoke", "user": "carol", "at": AT}), hub, found)
    assert mine.closed == "revoked"
    assert found.revoked(token("carol"))


@pytest.mark.parametrize(
    "payload",
    ["", "{", "[]", '{"op": "disconnect"}', '{"op": "revoke", "user": "alice"}', '{"op": "launch", "user": "alice"}'],
)
def test_a_malformed_control_message_is_ignored(payload):
    hub = Hub()
    (mine,) = _streams(hub, "alice/alice")
    handle(payload, hub, revocations())
    assert mine.closed is None
