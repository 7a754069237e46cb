"""Apply the Alembic migrations in ``migrations/`` to the events table (safe to run at once
from many workers and machines: an advisory lock serialises them)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, text

from .locks import migrate_key
from .schema import Names


def migrations_dir() -> Path:
    """The folder of the migrations: inside the package when installed, beside it in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "migrations", here.parent / "migrations"):
        if (candidate / "env.py").exists():
            return candidate
    raise FileNotFoundError("the notifications migrations folder is missing from this install")


def upgrade(engine: Engine, names: Names | None = None, revision: str = "head") -> None:
    """Bring the tables up to ``revision`` (creating the schema if it is missing)."""
    names = names or Names()
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["table"] = names.table
    config.attributes["schema"] = names.schema
    with engine.begin() as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": migrate_key(names)})
        if names.schema:
            conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{names.schema}"'))
        config.attributes["connection"] = conn
        command.upgrade(config, revision)
