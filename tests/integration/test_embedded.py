"""The embedded PostgreSQL default, including a machine with no PostgreSQL installed."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

from notifications.embedded import EmbeddedPostgres, find_binaries
from tests.support import pg


@pytest.fixture
def reachable_folder() -> Iterator[Path]:
    """A 0755 folder: as root the cluster runs as the postgres user, which must reach it."""
    folder = Path(tempfile.mkdtemp(prefix="notifications-embedded-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_without_postgresql_on_the_machine_the_pgserver_wheel_is_used(tmp_path: Path) -> None:
    found = find_binaries(search_path=str(tmp_path), debian_root=tmp_path)
    assert found.parts[-3:] == ("pgserver", "pginstall", "bin")
    assert (found / "pg_ctl").exists() and (found / "initdb").exists()


def test_a_cluster_from_the_wheel_serves_and_restarts_on_the_same_url(reachable_folder: Path) -> None:
    wheel_binaries = find_binaries(search_path="", debian_root=reachable_folder)
    cluster = EmbeddedPostgres(reachable_folder / "data", bin_dir=wheel_binaries)
    url = cluster.start()
    try:
        assert cluster.start() == url  # already running: reused
        with psycopg2.connect(pg.libpq_url(url)) as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
        cluster.stop()
        assert not cluster.is_running()
        assert cluster.start() == url
        with psycopg2.connect(pg.libpq_url(url)) as conn, conn.cursor() as cur:
            cur.execute("SHOW server_version")
            assert cur.fetchone()[0]
    finally:
        cluster.stop()
