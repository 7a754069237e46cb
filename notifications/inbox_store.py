"""The inbox tables in PostgreSQL: pages, unread counts, read / unread / dismiss, pruning.

An inbox notification is one row of ``<table>_inbox`` whoever it reaches (its event's own
targeting: a user, a channel, both, or everyone), written by ``EventStore.append_in`` in the
event's own statement, so a broadcast to 100,000 users costs one row. A user's read state is a
"read up to" cursor (``<table>_inbox_cursors``) and, where an item differs from it, a mark
(``<table>_inbox_marks``: read, unread, dismissed). Marking everything read is one statement
whatever the count: it moves the cursor and drops the marks at or below it.

Who sees an item is the stream's rule: its ``user_id`` is theirs or none, and its ``channel`` is
none or one of the channels asked for (none is stored as '', so that every branch is equalities).
Pages and counts are a ``UNION ALL`` of branches that each walk one range of one index (user,
channel, event_id), newest first: (the user, no channel), (the user, each channel), (no user, no
channel), (no user, each channel).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine

from .prepared import PreparedStatements
from .schema import Names

log = logging.getLogger("notifications")

BIGGEST_ID = 2**63 - 1
PRUNE_BATCH = 5000


@dataclass(frozen=True, slots=True)
class Row:
    """One item of a user's inbox, as stored."""

    id: int
    data: Any
    created_at: datetime
    read: bool


class InboxStore:
    """Reads and writes the inbox tables through one SQLAlchemy engine (raw SQL: every query is
    one round trip, and ``bench/inbox.py`` measures exactly these statements)."""

    def __init__(self, engine: Engine, names: Names, reads: Engine | None = None) -> None:
        self.engine = engine
        self.reads = reads or engine  # pages and counts are one statement each: autocommit is enough
        self.statements = PreparedStatements("inbox")
        self.items = names.sql("_inbox")
        self.marks = names.sql("_inbox_marks")
        self.cursors = names.sql("_inbox_cursors")
        self._upto = f"(SELECT coalesce((SELECT read_upto FROM {self.cursors} WHERE user_id = %(u)s), 0))"

    # -- visibility ------------------------------------------------------------------------

    @staticmethod
    def _branches(channels: Sequence[str], params: dict[str, Any]) -> list[str]:
        """The conditions of the branches (alias ``i``) whose union is what the user sees: each
        one range of the index (user_id, channel, event_id): (user, none), (user, each channel),
        (none, none) and (none, each channel)."""
        params["chs"] = list(channels)
        targets = ["i.channel = ''"]
        for n, channel in enumerate(channels):
            params[f"c{n}"] = channel
            targets.append(f"i.channel = %(c{n})s")
        return [f"{who} AND {target}" for who in ("i.user_id = %(u)s", "i.user_id = ''") for target in targets]

    VISIBLE = "i.user_id IN (%(u)s, '') AND (i.channel = '' OR i.channel = ANY(CAST(%(chs)s AS text[])))"

    # -- reading ---------------------------------------------------------------------------

    def page(
        self, conn: Connection, user_id: str, channels: Sequence[str], limit: int, before: int | None, unread: bool
    ) -> tuple[list[Row], int]:
        """At most ``limit`` items newest first, older than ``before``, only unread ones with
        ``unread``; and the unread count (one statement, one snapshot).

        The branches pick ids only (index-only scans, newest first, ``limit`` each); the page's
        rows are then read by primary key."""
        params: dict[str, Any] = {"u": user_id, "limit": limit, "before": before}
        upto = self._upto
        older = "" if before is None else " AND i.event_id < %(before)s"
        parts = []
        for branch in self._branches(channels, params):
            if unread:  # above the cursor, not marked read (nor dismissed)
                hidden = "(d.dismissed OR d.read)"
                branch += f" AND i.event_id > {upto}"
            else:
                hidden = "d.dismissed"
            parts.append(
                f"(SELECT i.event_id FROM {self.items} i WHERE {branch}{older} "
                f"AND NOT EXISTS (SELECT 1 FROM {self.marks} d WHERE d.user_id = %(u)s "
                f"AND d.event_id = i.event_id AND {hidden}) ORDER BY i.event_id DESC LIMIT %(limit)s)"
            )
        if unread:  # at or below the cursor: marked unread
            parts.append(
                f"(SELECT i.event_id FROM {self.marks} d JOIN {self.items} i ON i.event_id = d.event_id "
                f"WHERE d.user_id = %(u)s AND d.read = false AND NOT d.dismissed AND d.event_id <= {upto}"
                f"{older} AND {self.VISIBLE} ORDER BY d.event_id DESC LIMIT %(limit)s)"
            )
        # The count is an uncorrelated subquery (computed once); the LEFT JOIN keeps its row when
        # the page is empty.
        sql = (
            f"WITH ids AS (SELECT event_id FROM ({' UNION ALL '.join(parts)}) u "
            "ORDER BY event_id DESC LIMIT %(limit)s), "
            f"page AS (SELECT i.event_id, i.data, i.created_at, coalesce(m.read, i.event_id <= {upto}) AS read "
            f"FROM ids JOIN {self.items} i ON i.event_id = ids.event_id "
            f"LEFT JOIN {self.marks} m ON m.user_id = %(u)s AND m.event_id = i.event_id) "
            f"SELECT c.unread, page.* FROM (SELECT {self._count(channels, params)} AS unread) c "
            "LEFT JOIN page ON true ORDER BY page.event_id DESC"
        )
        rows = self._read(conn, sql, params)
        items = [Row(int(r[1]), r[2], r[3], bool(r[4])) for r in rows if r[1] is not None]
        return items, int(rows[0][0])

    def unread(self, conn: Connection, user_id: str, channels: Sequence[str]) -> int:
        """How many items the user sees that are unread (dismissed ones never count)."""
        params: dict[str, Any] = {"u": user_id}
        return int(self._read(conn, f"SELECT {self._count(channels, params)}", params)[0][0])

    def _count(self, channels: Sequence[str], params: dict[str, Any]) -> str:
        """The unread count as an SQL expression: the items above the cursor, less the marks
        above it that read or dismiss one, plus the marks at or below it that make one unread.

        Items above the cursor are counted without reading them: within one target the items'
        ``seq`` run 1, 2, 3, ... in id order, and pruning removes the oldest ids first, so the
        items a target keeps have consecutive ``seq``; how many of them are above the cursor is
        the newest one's ``seq`` less the ``seq`` of the newest one at or below the cursor (or of
        the oldest kept, less one): three index probes per branch, whatever the count."""
        upto = self._upto
        counts = []
        for branch in self._branches(channels, params):
            probe = f"(SELECT i.seq FROM {self.items} i WHERE {branch}"
            newest = f"{probe} ORDER BY i.event_id DESC LIMIT 1)"
            below = f"{probe} AND i.event_id <= {upto} ORDER BY i.event_id DESC LIMIT 1)"
            oldest = f"{probe} ORDER BY i.event_id LIMIT 1)"
            counts.append(f"coalesce({newest} - coalesce({below}, {oldest} - 1), 0)")
        marked = (
            f"(SELECT count(*) FILTER (WHERE d.event_id <= {upto} AND d.read = false AND NOT d.dismissed) "
            f"- count(*) FILTER (WHERE d.event_id > {upto} AND (d.read OR d.dismissed)) "
            f"FROM {self.marks} d JOIN {self.items} i ON i.event_id = d.event_id "
            f"WHERE d.user_id = %(u)s AND {self.VISIBLE})"
        )
        return f"({' + '.join(counts)} + {marked})"

    def _read(self, conn: Connection, sql: str, params: dict[str, Any]) -> list[Any]:
        """The rows of a read, run as a statement prepared once per connection: planning these
        unions costs several times more than running them."""
        return self.statements.run(conn, sql, params)

    # -- writing ---------------------------------------------------------------------------

    def mark(
        self, conn: Connection, user_id: str, channels: Sequence[str], ids: Sequence[int], action: str
    ) -> list[int]:
        """Mark the items of ``ids`` that the user sees (and has not dismissed) ``read``,
        ``unread`` or ``dismiss``ed, in one statement; return those ids (the others are ignored)."""
        params: dict[str, Any] = {"u": user_id, "ids": list(ids), "chs": list(channels)}
        values, update = {
            "read": ("true, false", "read = true"),
            "unread": ("false, false", "read = false"),
            "dismiss": ("NULL, true", "dismissed = true"),
        }[action]
        sql = (
            f"WITH hit AS (SELECT i.event_id FROM {self.items} i "
            f"WHERE i.event_id = ANY(CAST(%(ids)s AS bigint[])) AND {self.VISIBLE} "
            f"AND NOT EXISTS (SELECT 1 FROM {self.marks} d WHERE d.user_id = %(u)s "
            "AND d.event_id = i.event_id AND d.dismissed)), "
            # rows locked in id order, so two tabs marking the same items never deadlock
            f"up AS (INSERT INTO {self.marks} (user_id, event_id, read, dismissed) "
            f"SELECT %(u)s, event_id, {values} FROM hit ORDER BY event_id "
            f"ON CONFLICT (user_id, event_id) DO UPDATE SET {update}) "
            "SELECT event_id FROM hit ORDER BY event_id"
        )
        return [int(i) for i in conn.exec_driver_sql(sql, params).scalars().all()]

    def read_upto(self, conn: Connection, user_id: str, upto: int | None) -> int:
        """Mark every item with an id at or below ``upto`` read (None: every item), in one
        statement whatever the count: the cursor moves up (never past the newest item, so later
        items arrive unread), and the marks at or below it are dropped (dismissals stay).
        Return the id it marked up to."""
        params = {"u": user_id, "upto": BIGGEST_ID if upto is None else upto}
        sql = (
            f"WITH hit AS (SELECT LEAST(%(upto)s, (SELECT coalesce(max(event_id), 0) FROM {self.items})) AS upto), "
            f"cur AS (INSERT INTO {self.cursors} AS c (user_id, read_upto) SELECT %(u)s, upto FROM hit "
            "ON CONFLICT (user_id) DO UPDATE SET read_upto = GREATEST(c.read_upto, EXCLUDED.read_upto)), "
            f"gone AS (DELETE FROM {self.marks} d USING hit "
            "WHERE d.user_id = %(u)s AND d.event_id <= hit.upto AND NOT d.dismissed) "
            "SELECT upto FROM hit"
        )
        return int(conn.exec_driver_sql(sql, params).scalar_one())

    # -- pruning ---------------------------------------------------------------------------

    def prune(self, older_than: float, batch: int = PRUNE_BATCH) -> int:
        """Delete the items older than ``older_than`` seconds and their marks, oldest ids first
        and never past the oldest id of an item to keep (so the kept ones of each target keep
        consecutive ``seq``), in small batches; return how many items."""
        edge_sql = (
            f"SELECT coalesce((SELECT event_id FROM {self.items} "
            "WHERE created_at >= now() - make_interval(secs => %(age)s) ORDER BY event_id LIMIT 1), %(big)s)"
        )
        sql = (
            f"WITH victims AS (SELECT event_id FROM {self.items} WHERE event_id < %(edge)s "
            "ORDER BY event_id LIMIT %(batch)s), "
            f"gone AS (DELETE FROM {self.items} i USING victims v WHERE i.event_id = v.event_id "
            "RETURNING i.event_id), "
            f"marks AS (DELETE FROM {self.marks} d USING gone g WHERE d.event_id = g.event_id) "
            "SELECT count(*) FROM gone"
        )
        with self.engine.connect() as conn:
            edge = int(conn.exec_driver_sql(edge_sql, {"age": older_than, "big": BIGGEST_ID}).scalar_one())
            conn.rollback()
        deleted = 0
        while True:
            with self.engine.begin() as conn:
                count = int(conn.exec_driver_sql(sql, {"edge": edge, "batch": batch}).scalar_one())
            deleted += count
            if count < batch:
                return deleted
