"""Cross-worker fan-out: an event published from another process reaches clients on both workers."""

from __future__ import annotations

import threading
import time

from tests.support.checks import delivered_ids


def test_event_reaches_streams_on_both_workers(server, open_stream, token, user, publisher):
    clients, per_worker = server.open_on_all_workers(
        lambda i: open_stream(token(f"{user}-{i}"), name=f"s{i}"), minimum=8
    )
    assert len(per_worker) == 2, per_worker
    for c in clients:
        c.wait_connected()
    ids = [
        publisher.notify("hello all", notification_type="success"),
        publisher.broadcast_update("item", "created", {"id": 1}),
        publisher.publish("custom", [1, 2, 3]),
    ]
    for c in clients:
        received = [c.wait_for_id(i) for i in ids]
        assert [m.type for m in received] == ["notification", "update", "custom"]
        assert received[2].json() == [1, 2, 3]


def test_targeted_event_reaches_that_users_streams_on_both_workers(server, open_stream, token, user, publisher):
    clients, per_worker = server.open_on_all_workers(lambda i: open_stream(token(user), name=f"{user}-{i}"), minimum=6)
    assert len(per_worker) == 2, per_worker
    for c in clients:
        c.wait_connected()
    event_id = publisher.notify("just you", user_id=user)
    for c in clients:
        c.wait_for_id(event_id)


def test_concurrent_publishers_every_stream_gets_everything_in_id_order(server, open_stream, token, user, publisher):
    """Many publishers at once (pitfall: ids become visible out of order): no event is skipped."""
    clients, _ = server.open_on_all_workers(lambda i: open_stream(token(user), name=f"c{i}"), minimum=6)
    start = max(int(c.wait_connected().id or 0) for c in clients)
    start = max(start, publisher.newest)
    published: list[int] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(10):
                event_id = publisher.publish("burst", {"thread": n, "i": i})
                with lock:
                    published.append(event_id)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(published) == 60
    expected = sorted(published)
    for c in clients:
        # delivery is in id order: once the newest has arrived, every earlier one must have too
        c.wait_for_id(expected[-1], timeout=15)
        got = delivered_ids(c, after=start)
        assert got == expected, f"{c.name}: missing {sorted(set(expected) - set(got))}, order {got}"


def test_streams_opened_during_a_burst_get_every_event_after_their_connect_message_once(
    server, open_stream, token, user, publisher
):
    """100,000 events in one transaction keep each worker dispatching for a while; streams that
    connect meanwhile start at the newest announced id (the burst was committed before they
    connected) and then get every later event of theirs exactly once, in order, on both workers."""
    reader = f"{user}-burst"
    ids = publisher.call(
        "publish_many", [{"event": "burst", "data": {"i": i}, "user_id": reader} for i in range(100_000)]
    )
    publisher.stored([int(ids[-1])], timeout=60)  # moved by the sequencer in one transaction
    clients, starts = [], {}
    for i in range(8):
        deadline = time.monotonic() + 30
        while True:  # a stream that subscribed before its worker heard of the burst gets all of it live
            c = open_stream(token(reader), name=f"during-{i}")
            start = int(c.wait_connected(timeout=30).id or 0)
            if start >= int(ids[-1]) or time.monotonic() > deadline:
                break
            c.close()
        clients.append(c)
        starts[c.name] = start
    after = [publisher.publish("after", {"n": n}, user_id=reader) for n in range(3)]
    for c in clients:
        c.wait_for_id(after[-1], timeout=60)
        expected = [int(i) for i in ids if int(i) > starts[c.name]] + after
        got = delivered_ids(c, after=starts[c.name])
        assert got == expected, f"{c.name} from {starts[c.name]}: {len(got)} events, expected {len(expected)}"


def test_both_workers_and_a_replay_send_the_same_bytes_for_every_event(server, open_stream, token, user, publisher):
    """One worker runs the sequencer and hands the events it delivers straight to its own
    streams; the other reads them after the doorbell; a reconnect replays them from the table.
    All three send the same frames, byte for byte, in the same order."""
    clients, per_worker = server.open_on_all_workers(lambda i: open_stream(token(user), name=f"w{i}"), minimum=2)
    assert len(per_worker) == 2, per_worker
    for c in clients:
        c.wait_connected()
    before = publisher.publish("before", {}, user_id=user)
    payloads = [{"n": 1.5, "big": 10**20, "text": 'é "q" \\ \u2028'}, [None, True, {"b": 1, "a": [2]}], "plain"]
    ids = [publisher.publish("mixed", data, user_id=user) for data in payloads]
    ids += [int(i) for i in publisher.call("publish_many", [{"event": "many", "data": {"k": k}} for k in range(50)])]
    ids.append(publisher.notify("last", user_id=user))

    def frames(c):
        c.wait_for_id(ids[-1])
        return [(int(m.id), m.raw) for m in c.events if m.type != "heartbeat" and m.id and int(m.id) > before]

    live = [frames(c) for c in clients]
    replay = open_stream(token(user), headers={"Last-Event-ID": str(before)}, name="replay")
    assert [i for i, _ in live[0]] == sorted(ids)
    assert live[0] == live[1] == frames(replay)
