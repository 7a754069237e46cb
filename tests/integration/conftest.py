"""The integration tier uses the shared fixtures of ``tests/support/fixtures.py`` as they are:
a fresh database and a real gunicorn server (2 gevent workers) per module, shaped by the
module's ``server_env``, and a unique ``user``, a ``token`` minter and ``open_stream`` per test.
Beside them, ``flask_cli``: ``flask --app app notifications ...`` as a process of its own on the
module's database.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest

from tests.support.server import ROOT, VENV_BIN, clean_environ


@pytest.fixture(scope="module")
def flask_cli(database_url: str, jwt_secret: str) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``flask_cli(*args, check=True)``: run the CLI; with ``check`` a non-zero exit fails the test."""

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = clean_environ()
        env.update({"DATABASE_URL": database_url, "JWT_SECRET_KEY": jwt_secret})
        result = subprocess.run(
            [str(VENV_BIN / "flask"), "--app", "app", "notifications", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check:
            assert result.returncode == 0, f"exit {result.returncode}\nstdout:{result.stdout}\nstderr:{result.stderr}"
        return result

    return run
