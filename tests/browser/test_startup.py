"""The browser starts, and a machine without it fails this tier loudly instead of skipping it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def test_chromium_starts(browser: Any) -> None:
    assert browser.is_connected()
    assert browser.version.split(".")[0].isdigit(), browser.version


def test_missing_chromium_is_a_failure_not_a_skip() -> None:
    env = {**os.environ, "NOTIFICATIONS_TEST_CHROMIUM": "/nonexistent/chromium"}
    env.pop("PYTEST_ADDOPTS", None)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-q",
            "tests/browser/test_startup.py::test_chromium_starts",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    assert "no Chromium at /nonexistent/chromium" in out and "apt-get install -y chromium" in out, out
    assert "1 error" in out and "skipped" not in out, out
