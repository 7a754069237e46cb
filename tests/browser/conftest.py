"""Browser tier: Debian's headless Chromium, driven by Playwright, against a real gunicorn server.

Every test here is marked ``browser`` by folder (``pytest -m browser`` runs this tier,
``-m "not browser"`` skips it). No browser is ever downloaded: Chromium is the system one
(``apt-get install chromium``), ``NOTIFICATIONS_TEST_CHROMIUM`` overrides its path. A machine
without it FAILS these tests with the install line; it never skips them.

One server for the session (two gevent workers, the demo page on) on a database of its own for
the session, two small "other origin" web servers on their own ports for the CORS tests (one of
them allowed by ``NOTIFICATIONS_CORS_ORIGINS``), and a fresh browser context per test. The
PostgreSQL server, ``jwt_secret`` and ``user`` are the shared fixtures (tests/support/fixtures.py).
"""

from __future__ import annotations

import http.server
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support import pg
from tests.support.publisher import Publisher
from tests.support.server import GunicornServer, wait_until_serving

CHROMIUM = os.environ.get("NOTIFICATIONS_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
INSTALL_HINT = (
    "apt-get update && apt-get install -y chromium chromium-driver; "
    ".venv/bin/pip install playwright (never `playwright install`: the system Chromium is used)"
)
RETRY_MS = 500  # the stream's retry: (jittered 250..750 ms), so reconnections are quick
REFUSAL_RETRY_MS = 3000  # a refusal's retry: (jittered 1500..4500 ms)
# The access log line of every request, with the headers the tests look at (tokens are redacted).
ACCESS_LOG_FORMAT = '%(h)s "%(r)s" %(s)s last-event-id=%({last-event-id}i)s origin=%({origin}i)s'


# ---------------------------------------------------------------------------- the browser


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Debian's Chromium through Playwright; a missing browser or library is a failure."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(f"no Chromium at {CHROMIUM}: the browser tests need it. Install: {INSTALL_HINT}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        pytest.fail(f"Playwright for Python is missing ({exc}). Install: {INSTALL_HINT}")
    manager = sync_playwright().start()
    try:
        try:
            chromium = manager.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000)
        except Exception as exc:
            pytest.fail(f"Chromium at {CHROMIUM} did not start: {exc}\nInstall: {INSTALL_HINT}")
        yield chromium
        chromium.close()
    finally:
        manager.stop()


@dataclass
class PageLog:
    """What a page said on its console and the exceptions it raised."""

    console: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    ctx = browser.new_context(viewport={"width": 1360, "height": 900}, color_scheme="light")
    ctx.set_default_timeout(10_000)
    yield ctx
    ctx.close()


@pytest.fixture
def page_log() -> PageLog:
    return PageLog()


@pytest.fixture
def new_page(context: Any, page_log: PageLog) -> Iterator[Callable[[], Any]]:
    """``new_page()``: a page of this test's context whose console and exceptions are recorded;
    an uncaught exception in any of them fails the test."""

    def make() -> Any:
        page = context.new_page()
        page.on("console", lambda m: page_log.console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: page_log.errors.append(str(e)))
        return page

    yield make
    assert not page_log.errors, f"uncaught exceptions in the page: {page_log.errors}"


# ---------------------------------------------------------------------------- PostgreSQL, gunicorn


@pytest.fixture(scope="session")
def database_url(pg_admin_url: str) -> Iterator[str]:
    """The database of the session's server (on the shared PostgreSQL), for the whole session."""
    yield from pg.fresh_database(pg_admin_url, "browser")


@pytest.fixture(scope="session")
def publisher(database_url: str, jwt_secret: str) -> Publisher:
    return Publisher(database_url, jwt_secret)


class OtherOrigin:
    """A tiny web server on its own port: a page there is another origin than the service."""

    PAGE = b"<!doctype html><html lang=en><meta charset=utf-8><title>another origin</title><h1>another origin</h1>"

    def __init__(self) -> None:
        page = self.PAGE

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.httpd.server_address[1])
        self.origin = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name=f"origin-{self.port}", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="session")
def origins() -> Iterator[dict[str, OtherOrigin]]:
    """``{"allowed": …, "denied": …}``: two other origins, the first listed in the CORS setting."""
    made = {"allowed": OtherOrigin(), "denied": OtherOrigin()}
    yield made
    for o in made.values():
        o.close()


@pytest.fixture(scope="session")
def gunicorn(
    database_url: str,
    jwt_secret: str,
    publisher: Publisher,
    origins: dict[str, OtherOrigin],
) -> Iterator[GunicornServer]:
    env = {
        "NOTIFICATIONS_DEV_MODE": "1",
        "NOTIFICATIONS_RETRY_MS": str(RETRY_MS),
        "NOTIFICATIONS_REFUSAL_RETRY_MS": str(REFUSAL_RETRY_MS),
        "NOTIFICATIONS_CORS_ORIGINS": origins["allowed"].origin,
        "GUNICORN_CMD_ARGS": f"--access-logformat '{ACCESS_LOG_FORMAT}'",
    }
    # not under pytest's basetemp: a concurrent pytest session may rotate that away
    folder = Path(tempfile.mkdtemp(prefix="notifications-browser-gunicorn-"))
    srv = GunicornServer(database_url, jwt_secret, folder / "gunicorn.log", env=env, workers=2)
    try:
        srv.start()
        yield srv
    except BaseException:
        print(srv.log_tail())
        raise
    finally:
        srv.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def server(gunicorn: GunicornServer, publisher: Publisher) -> GunicornServer:
    """The session's server, checked before each test: both workers up and delivering events
    (a test before may have killed them)."""
    if gunicorn.proc is None or gunicorn.proc.poll() is not None:
        pytest.fail(f"the gunicorn master is gone\n{gunicorn.log_tail()}")
    try:
        wait_until_serving(gunicorn, publisher)
    except (OSError, AssertionError) as exc:
        pytest.fail(f"the server is not serving: {exc!r}\n{gunicorn.log_tail()}")
    return gunicorn


class AccessLog:
    """The server's access log lines (tokens redacted), with when this process first saw each."""

    LINE = re.compile(r'"(GET|POST|OPTIONS|HEAD) (\S+) HTTP/[\d.]+" (\d{3}) last-event-id=(\S*) origin=(\S*)')

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0
        self.seen: list[tuple[float, str]] = []

    def poll(self) -> list[tuple[float, str]]:
        """Read what was appended since the last poll; return every line seen since creation."""
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        now = time.monotonic()
        for line in chunk[:end].decode("utf-8", "replace").splitlines():
            if self.LINE.search(line):
                self.seen.append((now, line))
        return self.seen

    def requests(self, needle: str) -> list[tuple[float, str]]:
        return [(t, line) for t, line in self.poll() if needle in line]


@pytest.fixture
def access_log(server: GunicornServer) -> AccessLog:
    """The access log from now on."""
    return AccessLog(server.log_path)


# ---------------------------------------------------------------------------- the demo page


def open_demo(new_page: Callable[[], Any], server: GunicornServer, query: str = "") -> Any:
    """Open the demo page and wait for its stream to be open and its connect message shown."""
    page = new_page()
    page.goto(f"http://{server.host}:{server.port}/{query}")
    page.wait_for_function("window.demo && window.demo.state === 'open'")
    page.wait_for_function(
        "demo.events.some(e => e.type === 'notification' && e.data.message === 'Connected to notification stream')"
    )
    return page


def events(page: Any, types: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """The events the page received (``demo.events``), without heartbeats and connect messages."""
    got: list[dict[str, Any]] = page.evaluate("demo.events")
    return [
        e
        for e in got
        if e["type"] != "heartbeat"
        and not (isinstance(e["data"], dict) and e["data"].get("message") == "Connected to notification stream")
        and (types is None or e["type"] in types)
    ]
