"""A stream opened from another origin with cookie credentials:
``new EventSource(url, {withCredentials: true})``, the JWT in the ``access_token_cookie`` cookie.

The service allows the "allowed" origin (``NOTIFICATIONS_CORS_ORIGINS``) and not the "denied" one;
both are pages on other ports of 127.0.0.1 (other origins, same site, so the cookie is sent).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.support.publisher import Publisher
from tests.support.server import GunicornServer
from tests.support.tokens import mint

from .conftest import OtherOrigin

OPEN_JS = """
(url) => {
  window.got = { events: [], drops: [], opened: 0 };
  const es = (window.source = new EventSource(url, { withCredentials: true }));
  es.onopen = () => { window.got.opened += 1; };
  es.onerror = () => window.got.drops.push(es.readyState);
  for (const name of ["notification", "update", "error"]) {
    es.addEventListener(name, (e) => {
      if (!(e instanceof MessageEvent)) return;
      window.got.events.push({ type: e.type, id: e.lastEventId, data: JSON.parse(e.data) });
    });
  }
}
"""


def open_from(
    origin: OtherOrigin,
    server: GunicornServer,
    context: Any,
    new_page: Callable[[], Any],
    user: str,
    expect_response: bool = True,
) -> tuple[Any, dict[str, str]]:
    context.add_cookies(
        [
            {
                "name": "access_token_cookie",
                "value": mint(server.secret, user),
                "url": f"http://{server.host}:{server.port}",
            }
        ]
    )
    page = new_page()
    page.goto(origin.origin + "/")
    url = f"http://{server.host}:{server.port}/api/notifications/stream?probe={user}"
    if not expect_response:  # a request the browser blocks has no response event
        page.evaluate(OPEN_JS, url)
        return page, {}
    with page.expect_response(lambda r: "/api/notifications/stream" in r.url) as response:
        page.evaluate(OPEN_JS, url)
    return page, response.value.all_headers()


def test_allowed_origin_streams_with_cookie_credentials(
    server: GunicornServer,
    publisher: Publisher,
    origins: dict[str, OtherOrigin],
    context: Any,
    new_page: Callable[[], Any],
    user: str,
) -> None:
    page, headers = open_from(origins["allowed"], server, context, new_page, user)
    assert headers.get("access-control-allow-origin") == origins["allowed"].origin
    assert headers.get("access-control-allow-credentials") == "true"
    page.wait_for_function("got.events.some(e => e.data.message === 'Connected to notification stream')")
    event_id = publisher.broadcast_update("order", "updated", {"id": 3, "status": "paid"}, user_id=user)
    page.wait_for_function("id => got.events.some(e => e.id === id)", arg=str(event_id))
    got = page.evaluate("got")
    assert got["opened"] == 1 and got["drops"] == []
    assert [e["type"] for e in got["events"]] == ["notification", "update"]
    assert got["events"][1]["data"]["payload"] == {"id": 3, "status": "paid"}  # the cookie's user
    page.evaluate("source.close()")


def test_other_origin_is_refused_by_the_browser(
    server: GunicornServer,
    origins: dict[str, OtherOrigin],
    context: Any,
    new_page: Callable[[], Any],
    page_log: Any,
    user: str,
) -> None:
    page, _ = open_from(origins["denied"], server, context, new_page, user, expect_response=False)
    # without CORS headers for this origin the browser fails the connection for good: CLOSED (2)
    page.wait_for_function("got.drops.length > 0 && source.readyState === EventSource.CLOSED")
    got = page.evaluate("got")
    assert got["opened"] == 0 and got["events"] == []
    # it is the browser that refused (the server answered, without CORS headers for this origin)
    assert any("has been blocked by CORS policy" in line for line in page_log.console), page_log.console
