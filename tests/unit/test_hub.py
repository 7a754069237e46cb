"""notifications.fanout.Hub: which events reach a stream that subscribes while its worker is still
dispatching a burst (the routing index alone, no sockets: subscribers queue what they are sent)."""

from __future__ import annotations

from notifications.fanout import Hub
from notifications.store import StoredEvent
from notifications.transport import Subscriber


def events(first: int, last: int, user: str | None = None) -> list[StoredEvent]:
    return [StoredEvent(i, "burst", "{}", user, None) for i in range(first, last + 1)]


def received(sub: Subscriber) -> list[int]:
    return [event_id for event_id, _ in sub.early]


def test_a_stream_subscribing_behind_the_announced_head_starts_there_and_waits_outside_the_index() -> None:
    hub = Hub()
    hub.start(10)
    hub.announce(2_000)  # a burst up to 2,000 is committed; the worker has dispatched up to 10
    early, late = Subscriber("u", (), limit=10_000), Subscriber("u", (), limit=10_000)
    assert hub.subscribe(early) == 2_000 and early.cursor == 2_000
    assert hub.open_streams == 1 and early not in hub.everyone
    hub.dispatch(events(11, 1_500))
    assert received(early) == [] and early not in hub.everyone
    hub.dispatch(events(1_501, 2_000))
    assert received(early) == [] and early not in hub.everyone
    assert hub.subscribe(late) == 2_000  # caught up: routed at once
    assert late in hub.everyone
    hub.dispatch(events(2_001, 2_003))
    assert received(early) == received(late) == [2_001, 2_002, 2_003]
    assert early in hub.everyone and not hub.waiting


def test_a_stream_that_leaves_while_waiting_is_forgotten() -> None:
    hub = Hub()
    hub.start(0)
    hub.announce(100)
    sub = Subscriber("u", (), limit=100)
    hub.subscribe(sub)
    hub.unsubscribe(sub)
    hub.dispatch(events(1, 101))
    assert received(sub) == [] and hub.open_streams == 0 and sub not in hub.everyone


def test_a_caught_up_hub_routes_a_new_stream_at_its_cursor() -> None:
    hub = Hub()
    hub.start(5)
    sub = Subscriber("u", (), limit=100)
    assert hub.subscribe(sub) == 5 and sub in hub.everyone
    hub.announce(4)  # an older doorbell read late changes nothing
    hub.dispatch(events(6, 7, user="u") + events(8, 8, user="someone-else"))
    assert received(sub) == [6, 7]


def test_events_delivered_counts_only_what_a_stream_takes() -> None:
    """``notifications_events_delivered_total`` once counted pushes that were then dropped: to a
    closed stream, or an event a stream already had (replayed before it went live)."""
    from prometheus_client import REGISTRY

    def delivered() -> float:
        return REGISTRY.get_sample_value("notifications_events_delivered_total") or 0.0

    hub = Hub()
    hub.start(0)
    taking, closed, ahead = (Subscriber(f"u{i}", (), limit=100) for i in range(3))
    for sub in (taking, closed, ahead):
        hub.subscribe(sub)
    closed.close("gone")
    ahead.live, ahead.cursor = True, 5  # a live stream that already has everything up to 5
    before = delivered()
    hub.dispatch([StoredEvent(i, "e", "{}", None, None) for i in (4, 5)])
    assert delivered() - before == 2  # both to ``taking``; none to ``closed``, none to ``ahead``
    assert received(taking) == [4, 5] and received(closed) == []
