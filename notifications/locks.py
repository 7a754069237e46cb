"""Every PostgreSQL advisory lock this package takes, in one place (their keys must stay the same
from release to release: old and new workers share them during a rolling deploy).

* ``publish_key``: transaction-level, taken by the sequencer for each batch it delivers (and by
  the publishers of releases before the sequencer, during a rolling deploy), so ids are
  committed in order.
* ``sequencer_key``: session-level, held by the one sequencer of a database (``sequencer``).
* ``prune_key``: session-level, one pruner at a time across every machine (``pruning``).
* ``migrate_key``: transaction-level, one migration at a time (``migrate.upgrade``).
* ``LIMITS_NAMESPACE`` with a user's bucket (two-key form): one admission batch at a time per
  bucket of users (``limits``).
"""

from __future__ import annotations

import zlib

from .schema import Names

LIMITS_NAMESPACE = 0x6E6F74
LIMIT_BUCKETS = 256  # advisory locks per admission batch at most, however many users it admits


def publish_key(names: Names) -> int:
    return zlib.crc32(f"notifications:{names.channel}".encode())


def prune_key(names: Names) -> int:
    return publish_key(names) + 1


def sequencer_key(names: Names) -> int:
    return publish_key(names) + 2


def migrate_key(names: Names) -> int:
    return zlib.crc32(f"migrate:{names.channel}".encode())


def user_bucket(user_id: str) -> int:
    """The bucket of ``user_id``'s limits lock (``LIMITS_NAMESPACE``, bucket)."""
    return zlib.crc32(user_id.encode()) % LIMIT_BUCKETS
