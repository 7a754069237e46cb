"""The embedded PostgreSQL default: a private cluster in a data folder, for development and tests.

Binaries come from the machine (``pg_ctl`` on ``PATH`` or ``/usr/lib/postgresql/*/bin``) or
from the ``pgserver`` wheel. PostgreSQL refuses to run as root, so as root the cluster runs as
the ``postgres`` system user (else ``nobody``); the data folder is owned by that user.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from .exceptions import NotificationsError

SUPERUSER = "postgres"


class EmbeddedPostgresError(NotificationsError):
    """The embedded PostgreSQL could not be found, created or started."""


def find_binaries(search_path: str | None = None, debian_root: Path = Path("/usr/lib/postgresql")) -> Path:
    """Return the folder holding ``pg_ctl`` and ``initdb``: on ``PATH``, else the newest Debian
    install, else the ``pgserver`` wheel's (so a machine with no PostgreSQL works too)."""
    on_path = shutil.which("pg_ctl", path=search_path)
    if on_path and shutil.which("initdb", path=search_path):
        return Path(on_path).parent
    debian = sorted(
        debian_root.glob("*/bin/pg_ctl"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if debian:
        return debian[-1].parent
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "pginstall" / "bin"
        if (bundled / "pg_ctl").exists():
            return bundled
    raise EmbeddedPostgresError(
        "No PostgreSQL binaries found: install PostgreSQL or the 'pgserver' wheel, "
        "or set DATABASE_URL to an existing database."
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _previous_port(port_file: Path) -> int | None:
    """The port this cluster used before, if it is still free."""
    try:
        port = int(port_file.read_text().strip())
    except (OSError, ValueError):
        return None
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as PostgreSQL binds it
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return None
    return port


def _run_as() -> str | None:
    """The system user to run PostgreSQL as, or None to run as ourselves."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise EmbeddedPostgresError("Running as root and no 'postgres' or 'nobody' user exists.")


def _runnable_copy(user: str, bin_dir: Path) -> Path:
    """The binaries, where ``user`` can run them: as they are, or (say a ``pgserver`` wheel in a
    venv under /root) copied once, with their libraries, to a folder under the temp directory."""
    if subprocess.run(["test", "-x", str(bin_dir / "initdb")], user=user, check=False).returncode == 0:
        return bin_dir
    install = bin_dir.parent  # pgserver/pginstall; its binaries find their libraries through
    libs = install.parent.parent / f"{install.parent.name}.libs"  # rpath $ORIGIN/../../../pgserver.libs
    digest = hashlib.sha1(str(install).encode()).hexdigest()[:12]
    target = Path(tempfile.gettempdir()) / f"notifications-pg-install-{digest}"
    copied = target / install.parent.name / install.name
    with open(f"{target}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / ".complete").exists():
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(install, copied, symlinks=True)
            if libs.is_dir():
                shutil.copytree(libs, target / libs.name, symlinks=True)
            for folder in (target, copied.parent):
                folder.chmod(0o755)
            (target / ".complete").touch()
    return copied / bin_dir.name


def _reachable_by(user: str, folder: Path) -> bool:
    """Whether ``user`` can enter ``folder`` (creating it first if needed)."""
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["test", "-x", str(folder)], user=user, check=False).returncode == 0


class EmbeddedPostgres:
    """A PostgreSQL cluster in ``data_dir``, listening on 127.0.0.1 and a socket in the folder."""

    def __init__(self, data_dir: str | os.PathLike[str], bin_dir: Path | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.bin_dir = bin_dir or find_binaries()
        self.user = _run_as()
        self.started_here = False
        if self.user is not None:
            self.bin_dir = _runnable_copy(self.user, self.bin_dir)
        if self.user is not None and not _reachable_by(self.user, self.data_dir.parent):
            # As root in a private folder (say /root/project) the postgres user cannot reach the
            # instance folder: keep the cluster in a folder of its own under the temp directory.
            digest = hashlib.sha1(str(self.data_dir).encode()).hexdigest()[:12]
            self.data_dir = Path(tempfile.gettempdir()) / f"notifications-pg-{digest}" / self.data_dir.name
            self.data_dir.parent.mkdir(mode=0o755, exist_ok=True)

    @property
    def port(self) -> int:
        text = (self.data_dir / "port").read_text().strip()
        return int(text)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg2://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _cmd(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin_dir / args[0]), *args[1:]],
            user=self.user,
            capture_output=True,
            text=True,
            check=check,
            cwd="/",
        )

    def is_running(self) -> bool:
        if not (self.data_dir / "PG_VERSION").exists():
            return False
        return self._cmd("pg_ctl", "status", "-D", str(self.data_dir), check=False).returncode == 0

    def _init(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            shutil.chown(self.data_dir, self.user)
        os.chmod(self.data_dir, 0o700)
        try:
            self._cmd(
                "initdb",
                "-D",
                str(self.data_dir),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--locale=C",
            )
        except subprocess.CalledProcessError as exc:
            raise EmbeddedPostgresError(f"initdb failed: {exc.stderr.strip()}") from exc
        except PermissionError as exc:
            raise EmbeddedPostgresError(
                f"Cannot run PostgreSQL in {self.data_dir} as {self.user}: {exc}; "
                "set DATABASE_URL or use a folder that user can reach."
            ) from exc

    def start(self) -> str:
        """Create the cluster if needed, start it if it is not running; return its URL.

        Safe to call from several processes at once: a lock file serialises them."""
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(self.data_dir.parent / f".{self.data_dir.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return self._start()

    def _start(self) -> str:
        if not (self.data_dir / "PG_VERSION").exists():
            self._init()
        if self.is_running():
            return self.url()
        port_file = self.data_dir / "port"
        port = _previous_port(port_file) or _free_port()  # a restart keeps its URL
        port_file.write_text(f"{port}\n")
        options = (
            f"-p {port} -k {self.data_dir} -c listen_addresses=127.0.0.1 "
            "-c max_connections=500 -c fsync=on -c shared_buffers=128MB"
        )
        result = self._cmd(
            "pg_ctl",
            "start",
            "-w",
            "-t",
            "60",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.data_dir / "server.log"),
            "-o",
            options,
            check=False,
        )
        if result.returncode != 0:
            log = self.data_dir / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise EmbeddedPostgresError(f"PostgreSQL did not start: {result.stderr}{tail}")
        self.started_here = True
        self._wait_ready(port)
        return self.url()

    def _wait_ready(self, port: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.05)
        raise EmbeddedPostgresError(f"PostgreSQL did not accept connections on port {port}")

    def stop(self, mode: str = "fast") -> None:
        """Stop the cluster (``fast`` ends sessions; ``immediate`` is a crash stop)."""
        if self.is_running():
            self._cmd("pg_ctl", "stop", "-w", "-D", str(self.data_dir), "-m", mode, check=False)
