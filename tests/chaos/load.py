"""Concurrent publishers (threads in the test process) and the exactness check.

Publishers use the public API (``publish``, ``publish_many``) and, to model an application
transaction that commits late or rolls back, the store inside a longer transaction::

    with state.store.engine.begin() as conn:
        <work>; ids = state.store.append_in(conn, [event]); <more work>; commit or raise

The truth of what was committed is the events table itself (a publish that fails while the
database goes away may or may not have committed); the ledger of what publishers saw is checked
against it: every acknowledged event is in the table (under the id its publish returned, or, if
its transaction committed after a higher id was delivered, under a new, higher id: found by the
unique ``tag`` in its data), and no rolled-back event is.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg2

from notifications import PublishError, publish, publish_many
from notifications.events import make_event
from notifications.extension import get_state
from tests.support import pg

from .swarm import VClient

EVENT = "chaos"


class _Rollback(Exception):
    pass


@dataclass
class Ledger:
    committed: dict[int, tuple[str | None, str | None]] = field(default_factory=dict)
    rolled_back: set[int] = field(default_factory=set)
    tags: dict[int, str] = field(default_factory=dict)  # acknowledged or rolled-back id → its data's tag
    failures: list[str] = field(default_factory=list)  # PublishError and friends (outcome unknown)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def commit(
        self, ids: Iterable[str], targets: Sequence[tuple[str | None, str | None]], tags: Sequence[str] = ()
    ) -> None:
        with self.lock:
            for event_id, target in zip(ids, targets, strict=True):
                self.committed[int(event_id)] = target
            self.tags.update(zip((int(i) for i in ids), tags, strict=False))

    def rollback(self, ids: Iterable[str], tags: Sequence[str] = ()) -> None:
        with self.lock:
            self.rolled_back.update(int(i) for i in ids)
            self.tags.update(zip((int(i) for i in ids), tags, strict=False))


class Publishers:
    """``threads`` publishers mixing short publishes, batches and long transactions.

    ``pace`` is the pause between two publishes of one thread (it creates load, it does not
    synchronise anything). ``long_share`` of the publishes run inside a longer transaction that
    sleeps up to ``long_delay`` seconds before and after its append; ``rollback_share`` of those
    roll back.
    """

    def __init__(
        self,
        app: Any,
        users: Sequence[str],
        channels: Sequence[str],
        ledger: Ledger,
        threads: int = 4,
        pace: float = 0.02,
        long_share: float = 0.3,
        rollback_share: float = 0.3,
        long_delay: float = 0.03,
        broadcast_share: float = 0.05,
        payload_bytes: int = 0,
        seed: int = 0,
    ) -> None:
        self.app = app
        self.users = list(users)
        self.channels = list(channels)
        self.ledger = ledger
        self.threads = threads
        self.pace = pace
        self.long_share = long_share
        self.rollback_share = rollback_share
        self.long_delay = long_delay
        self.broadcast_share = broadcast_share
        self.payload = "x" * payload_bytes
        self.seed = seed
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        self._tags = itertools.count()
        self.count = 0
        self.errors: list[BaseException] = []  # unexpected exceptions (not PublishError)

    def _target(self, rnd: random.Random) -> tuple[str | None, str | None]:
        r = rnd.random()
        if r < self.broadcast_share:
            return None, None
        if r < 0.65 or not self.channels:
            return rnd.choice(self.users), None
        if r < 0.9:
            return None, rnd.choice(self.channels)
        return rnd.choice(self.users), rnd.choice(self.channels)

    def start(self) -> Publishers:
        for n in range(self.threads):
            t = threading.Thread(target=self._run, args=(random.Random(f"{self.seed}-{n}"),), daemon=True)
            t.start()
            self._workers.append(t)
        return self

    def stop(self, timeout: float = 15.0) -> None:
        self._stop.set()
        deadline = time.monotonic() + timeout
        for t in self._workers:
            t.join(max(0.1, deadline - time.monotonic()))
        alive = [t for t in self._workers if t.is_alive()]
        assert not alive, f"{len(alive)} publisher threads still running after {timeout}s"
        assert not self.errors, f"publishers failed unexpectedly: {self.errors[:3]!r}"

    def __enter__(self) -> Publishers:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, rnd: random.Random) -> None:
        with self.app.app_context():
            while not self._stop.is_set():
                try:
                    self._one(rnd)
                except PublishError as exc:
                    with self.ledger.lock:
                        self.ledger.failures.append(repr(exc))
                    self._stop.wait(0.05)
                except Exception as exc:  # noqa: BLE001 - reported by stop()
                    if _database_gone(exc):
                        with self.ledger.lock:
                            self.ledger.failures.append(repr(exc))
                        self._stop.wait(0.05)
                    else:
                        self.errors.append(exc)
                        return
                self._stop.wait(rnd.uniform(0, 2 * self.pace))

    def _one(self, rnd: random.Random) -> None:
        self.count += 1
        r = rnd.random()
        if r < self.long_share:
            self._long(rnd)
        elif r < self.long_share + 0.1:
            targets = [self._target(rnd) for _ in range(rnd.randint(2, 5))]
            datas = [self._data(rnd) for _ in targets]
            ids = publish_many(
                [
                    {"event": EVENT, "data": d, "user_id": u, "channel": c}
                    for d, (u, c) in zip(datas, targets, strict=True)
                ]
            )
            self.ledger.commit(ids, targets, [d["tag"] for d in datas])
        else:
            target = self._target(rnd)
            data = self._data(rnd)
            event_id = publish(EVENT, data, user_id=target[0], channel=target[1])
            self.ledger.commit([event_id], [target], [data["tag"]])

    def _long(self, rnd: random.Random) -> None:
        """An application transaction: work, append (as late as possible), more work, commit or
        roll back. The sleeps *create* the late commit; they synchronise nothing."""
        state = get_state()
        target = self._target(rnd)
        roll_back = rnd.random() < self.rollback_share
        ids: list[str] = []
        data = self._data(rnd)
        try:
            with state.store.engine.begin() as conn:
                time.sleep(rnd.uniform(0, self.long_delay))
                ids = state.store.append_in(conn, [make_event(EVENT, data, user_id=target[0], channel=target[1])])
                time.sleep(rnd.uniform(0, self.long_delay / 3))
                if roll_back:
                    raise _Rollback
        except _Rollback:
            self.ledger.rollback(ids, [data["tag"]])
            return
        self.ledger.commit(ids, [target], [data["tag"]])

    def _data(self, rnd: random.Random) -> dict[str, Any]:
        data: dict[str, Any] = {"n": rnd.randrange(1 << 30), "tag": f"{self.seed}-{next(self._tags)}"}
        if self.payload:
            data["pad"] = self.payload
        return data


def _database_gone(exc: BaseException) -> bool:
    from sqlalchemy.exc import DBAPIError

    return isinstance(exc, DBAPIError | psycopg2.Error | OSError)


# ---------------------------------------------------------------------------- the truth


def committed_events(database_url: str, after: int = 0) -> dict[int, tuple[str | None, str | None]]:
    """Every committed event with id > ``after``: id → (user_id, channel), from the table."""
    conn = psycopg2.connect(pg.libpq_url(database_url))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT id, user_id, channel FROM notification_events WHERE id > %s ORDER BY id", (after,))
            return {int(i): (u, c) for i, u, c in cur.fetchall()}
    finally:
        conn.close()


def committed_tags(database_url: str) -> dict[str, int]:
    """The tag of every committed event that has one → its id."""
    conn = psycopg2.connect(pg.libpq_url(database_url))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT data->>'tag', id FROM notification_events WHERE data ? 'tag'")
            return {str(t): int(i) for t, i in cur.fetchall()}
    finally:
        conn.close()


def visible(target: tuple[str | None, str | None], user: str, channels: Sequence[str]) -> bool:
    user_id, channel = target
    if user_id is not None and user_id != user:
        return False
    return channel is None or channel in channels


def expected_ids(client: VClient, truth: dict[int, tuple[str | None, str | None]]) -> list[int]:
    start = client.start_id or 0
    return [i for i in sorted(truth) if i > start and visible(truth[i], client.user, client.channels)]


def check_ledger(
    ledger: Ledger, truth: dict[int, tuple[str | None, str | None]], tags: dict[str, int] | None = None
) -> None:
    """What publishers were told matches the table: acknowledged ⊆ table, rolled back ∩ table = ∅.

    With ``tags`` (``committed_tags``), an acknowledged event missing under its id counts when it
    is found by its tag under a higher one (it committed after a higher id was delivered)."""
    tags = tags or {}
    with ledger.lock:
        found = {i: tags.get(ledger.tags.get(i, ""), i) for i in ledger.committed}
        renumbered = {i: n for i, n in found.items() if n != i}
        assert all(n > i for i, n in renumbered.items()), f"renumbered to a lower id: {renumbered}"
        assert all(n not in ledger.committed for n in renumbered.values()), "a new id collides with an old one"
        missing = [i for i, n in found.items() if n not in truth]
        resurrected = sorted(ledger.rolled_back & set(truth))
        resurrected += [i for i in ledger.rolled_back if ledger.tags.get(i) in tags]
        wrong = [i for i, t in ledger.committed.items() if found[i] in truth and truth[found[i]] != t]
    assert not missing, f"acknowledged publishes missing from the table: {missing[:20]}"
    assert not resurrected, f"rolled-back events found in the table: {resurrected[:20]}"
    assert not wrong, f"events stored with another target than published: {wrong[:20]}"


def assert_exact(
    clients: Sequence[VClient],
    truth: dict[int, tuple[str | None, str | None]],
    ledger: Ledger | None = None,
    upto: int | None = None,
) -> int:
    """Each client received exactly its expected ids: same set, same order, no duplicates, and
    none of the rolled-back ones. ``upto``: ignore ids above it (published after the sentinel).
    Returns the number of deliveries checked."""
    rolled_back = set() if ledger is None else set(ledger.rolled_back)
    problems: list[str] = []
    total = 0
    for c in clients:
        got = [i for i in c.received if upto is None or i <= upto]
        want = [i for i in expected_ids(c, truth) if upto is None or i <= upto]
        total += len(got)
        if got == want:
            continue
        got_set, want_set = set(got), set(want)
        dups = sorted({i for i in got if got.count(i) > 1}) if len(got_set) != len(got) else []
        disorder = next((f"{a} before {b}" for a, b in zip(got, got[1:], strict=False) if a >= b), None)
        problems.append(
            f"client {c.index} (user {c.user}, channels {c.channels}, from {c.start_id}, "
            f"{c.connections} connections): {len(got)} received, {len(want)} expected; "
            f"missing {sorted(want_set - got_set)[:10]}, unexpected {sorted(got_set - want_set)[:10]} "
            f"(rolled back: {sorted((got_set - want_set) & rolled_back)[:10]}), duplicates {dups[:10]}, "
            f"first disorder {disorder}; ends {[e.kind for e in c.ends[-6:]]}"
        )
    assert not problems, f"{len(problems)} of {len(clients)} clients got a wrong sequence:\n" + "\n".join(problems[:15])
    return total


def assert_no_errors(clients: Sequence[VClient], resets: bool = True) -> None:
    bad = [c for c in clients if c.errors or c.anomalies or (resets and c.resets)]
    assert not bad, "clients got error/reset events or anomalies:\n" + "\n".join(
        f"  client {c.index}: errors {c.errors[:3]}, resets {c.resets[:3]}, anomalies {c.anomalies[:2]}"
        for c in bad[:10]
    )
    refused = [(c.index, e.kind) for c in clients for e in c.ends if e.kind.startswith("http-")]
    assert not refused, f"non-200 answers: {refused[:10]}"
