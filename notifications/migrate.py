"""Apply the Alembic migrations in ``migrations/`` to the events table (safe to run at once
from many workers and machines: an advisory lock serialises them)."""

from __future__ import annotations

import zlib
from pathlib import Path

from sqlalchemy import Engine, text


def migrations_dir() -> Path:
    """The folder of the migrations: inside the package when installed, beside it in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "migrations", here.parent / "migrations"):
        if (candidate / "env.py").exists():
            return candidate
    raise FileNotFoundError("the notifications migrations folder is missing from this install")


def upgrade(engine: Engine, table: str = "notification_events", revision: str = "head") -> None:
    """Bring the events table up to ``revision``."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["table"] = table
    with engine.begin() as conn:
        conn.execute(
            text("SELECT pg_advisory_xact_lock(:key)"), {"key": zlib.crc32(f"migrate:{table}".encode())}
        )
        config.attributes["connection"] = conn
        command.upgrade(config, revision)
