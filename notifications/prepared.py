"""Statements prepared and planned once per database connection.

Planning is most of the server's work for the statements we run most (the publish INSERT, the
inbox's unions): a ``PREPARE`` per pooled connection, then ``EXECUTE``, skips it. Behind a pooler
that moves sessions between server connections (PgBouncer in transaction mode) prepared
statements fail: then every statement is planned again, from the first such error on.
"""

from __future__ import annotations

import hashlib
import logging
import re
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

log = logging.getLogger("notifications")

PREPARED = "notifications.prepared"  # the names prepared on a connection, in its record's info
MISSING_OR_THERE = ("26000", "42P05")  # invalid_sql_statement_name, duplicate_prepared_statement


class PreparedStatements:
    """Runs SQL with ``%(name)s`` parameters as prepared statements on SQLAlchemy connections.

    ``what`` names the user in the warning given when a pooler forbids them."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.enabled = True
        self._known: dict[str, tuple[str, str, list[str]]] = {}

    def run(self, conn: Connection, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """The rows of ``sql`` with ``params``, prepared on ``conn`` the first time and run on
        the driver's own cursor (SQLAlchemy's statement and result machinery cost twice what the
        driver does). Errors are raised as SQLAlchemy's, and a lost connection is invalidated,
        as ``exec_driver_sql`` would. Only for statements that change nothing when they fail, or
        inside autocommit: a failed ``EXECUTE`` is run again unprepared."""
        if self.enabled:
            name, positional, order = self._prepared(sql)
            done = conn.connection.info.setdefault(PREPARED, set())
            statement = f"EXECUTE {name}({', '.join(f'%({key})s' for key in order)})"
            driver = conn.connection.dbapi_connection
            assert driver is not None
            cursor = driver.cursor()
            try:
                if not done:
                    # Plan each statement once, for any parameters (the default replans a
                    # statement whose generic plan looks dearer, every time for the inbox's
                    # unions); only prepared statements are affected, and only ours are here.
                    cursor.execute("SET plan_cache_mode = force_generic_plan")
                if name not in done:
                    cursor.execute(f"PREPARE {name} AS {positional}")
                    done.add(name)
                cursor.execute(statement, params)
                return list(cursor.fetchall())
            except conn.dialect.loaded_dbapi.Error as exc:
                if getattr(exc, "pgcode", None) not in MISSING_OR_THERE:
                    lost = conn.dialect.is_disconnect(exc, driver, cursor)
                    if lost:
                        conn.invalidate(exc)
                    raise DBAPIError.instance(
                        statement, params, exc, conn.dialect.loaded_dbapi.Error, connection_invalidated=lost
                    ) from exc
                self.enabled = False
                log.warning(
                    "%s: prepared statements do not work on this connection (a pooler?): not using them", self.what
                )
            finally:
                cursor.close()
        return [tuple(row) for row in conn.exec_driver_sql(sql, params)]

    def _prepared(self, sql: str) -> tuple[str, str, list[str]]:
        """A statement's name (from its text), its text with positional parameters, their keys."""
        known = self._known.get(sql)
        if known is None:
            order: list[str] = []

            def number(match: re.Match[str]) -> str:
                if match.group(1) not in order:
                    order.append(match.group(1))
                return f"${order.index(match.group(1)) + 1}"

            positional = re.sub(r"%\((\w+)\)s", number, sql)
            name = "notifications_" + hashlib.sha1(sql.encode()).hexdigest()[:20]
            known = self._known[sql] = (name, positional, order)
        return known
