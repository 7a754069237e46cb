"""docs/demo.png: the demo page with a few toasts and orders, made by the real page and server."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.publisher import Publisher
from tests.support.server import GunicornServer

from .conftest import open_demo

DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "demo.png"


def test_screenshot_of_the_demo_page(
    server: GunicornServer, publisher: Publisher, new_page: Callable[[], Any], tmp_path: Path
) -> None:
    # The README's picture is rewritten only on request: UPDATE_SCREENSHOT=1 pytest tests/browser
    screenshot = DOCS_SCREENSHOT if os.environ.get("UPDATE_SCREENSHOT") else tmp_path / "demo.png"
    user = "ada"
    page = open_demo(new_page, server, f"?user={user}")
    page.get_by_role("button", name="Dismiss notification").click()  # the connect message
    orders = [
        ("created", {"id": 1041, "status": "pending", "total": 89.00}),
        ("created", {"id": 1042, "status": "pending", "total": 129.90}),
        ("created", {"id": 1043, "status": "paid", "total": 54.20}),
        ("updated", {"id": 1041, "status": "delivered"}),
        ("updated", {"id": 1043, "status": "shipped"}),
        ("created", {"id": 1044, "status": "pending", "total": 18.75}),
        ("updated", {"id": 1042, "status": "paid"}),
    ]
    for action, payload in orders:
        publisher.broadcast_update("order", action, payload, user_id=user)
    publisher.publish("chat.message", {"from": "grace", "text": "Lunch at noon?"}, user_id=user)
    publisher.notify(
        "Version 1.4.2 is live.", notification_type="info", title="Deploy finished", duration=120_000, user_id=user
    )
    publisher.notify(
        "Only 3 left of \u201cBlue mug\u201d.",
        notification_type="warning",
        title="Stock running low",
        duration=120_000,
        user_id=user,
    )
    publisher.notify(
        "Order #1045: the card was declined.",
        notification_type="error",
        title="Payment failed",
        duration=120_000,
        user_id=user,
    )
    last = publisher.notify(
        "Order #1042 was paid.", notification_type="success", title="Payment received", duration=120_000, user_id=user
    )
    page.wait_for_function("id => demo.events.some(e => e.lastEventId === id)", arg=str(last))
    assert page.locator("#orders tbody tr[data-id]").count() == 4
    assert page.locator("#toasts .toast").count() == 4
    page.wait_for_timeout(1400)  # let the row highlight and the toasts' slide-in finish
    screenshot.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(screenshot))
    assert screenshot.stat().st_size > 10_000
