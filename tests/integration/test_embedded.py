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


def test_wheel_binaries_in_a_private_folder_still_run(reachable_folder: Path, tmp_path: Path) -> None:
    """As root with the venv under a 0700 folder (say /root/project/.venv), the postgres user
    cannot run the wheel's binaries where they are: they are copied somewhere it can."""
    wheel_bin = find_binaries(search_path="", debian_root=reachable_folder)
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    site = wheel_bin.parents[2]
    for name in ("pgserver", "pgserver.libs"):
        if (site / name).is_dir():
            shutil.copytree(site / name, private / name, symlinks=True)
    cluster = EmbeddedPostgres(reachable_folder / "data", bin_dir=private / "pgserver" / "pginstall" / "bin")
    try:
        url = cluster.start()
        with psycopg2.connect(pg.libpq_url(url)) as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
    finally:
        cluster.stop()
