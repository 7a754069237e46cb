"""The demo page shows every kind of event, published from Python, over HTTP and from its own form."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from tests.support.publisher import Publisher
from tests.support.server import GunicornServer
from tests.support.tokens import mint

from .conftest import events, open_demo

CONNECTED = "Connected to notification stream"


def http_publish(server: GunicornServer, token: str, body: Any) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"http://{server.host}:{server.port}/api/notifications/publish",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.loads(response.read())


def wait_event(page: Any, event_id: int | str) -> dict[str, Any]:
    page.wait_for_function("id => demo.events.some(e => e.lastEventId === id)", arg=str(event_id))
    return next(e for e in events(page) if e["lastEventId"] == str(event_id))


def toast(page: Any, text: str) -> Any:
    return page.locator("#toasts .toast", has_text=text)


def test_demo_page_shows_state_user_and_connect_toast(
    server: GunicornServer, new_page: Callable[[], Any], user: str
) -> None:
    page = open_demo(new_page, server, f"?user={user}")
    assert page.locator("#state").inner_text() == "open"
    assert page.locator("#state").get_attribute("data-state") == "open"
    assert page.locator("#user").inner_text() == user
    assert page.locator("#toasts").get_attribute("aria-live") == "polite"
    connected = toast(page, CONNECTED)
    assert connected.count() == 1
    assert "info" in (connected.get_attribute("class") or "")
    # the last event id shown is the one of the last event received (the connect message's)
    last = page.evaluate("demo.events.at(-1).lastEventId")
    assert page.locator("#last-id").inner_text() == last


def test_notifications_from_python_become_styled_toasts(
    server: GunicornServer, publisher: Publisher, new_page: Callable[[], Any], user: str
) -> None:
    page = open_demo(new_page, server, f"?user={user}")
    ids = {}
    for kind in ("success", "error", "warning", "info"):
        ids[kind] = publisher.notify(
            f"A {kind} message",
            notification_type=kind,
            title=f"{kind.title()} title",
            duration=60_000,
            user_id=user,
        )
    wait_event(page, ids["info"])
    for kind in ("success", "error", "warning", "info"):
        t = toast(page, f"A {kind} message")
        t.wait_for()
        assert t.get_attribute("data-type") == kind
        assert kind in (t.get_attribute("class") or "").split()
        assert t.locator(".title").inner_text() == f"{kind.title()} title"
        # errors interrupt a screen reader; the others are read politely by the toast region
        assert t.get_attribute("role") == ("alert" if kind == "error" else None)
    assert page.locator("#last-id").inner_text() == str(ids["info"])

    # duration is honoured: a short toast goes away by itself, a long one stays
    short = publisher.notify("Gone soon", notification_type="success", duration=700, user_id=user)
    wait_event(page, short)
    t0 = time.monotonic()
    toast(page, "Gone soon").wait_for(state="detached", timeout=5000)
    assert time.monotonic() - t0 < 3.0
    assert toast(page, "A warning message").count() == 1
    # without a title the toast is titled by its type; the close button removes it
    untitled = publisher.notify("No title here", notification_type="warning", user_id=user)
    wait_event(page, untitled)
    t = toast(page, "No title here")
    assert t.locator(".title").inner_text() == "Warning"
    t.get_by_role("button", name="Dismiss notification").click()
    t.wait_for(state="detached")


def test_order_updates_fill_the_live_table(
    server: GunicornServer, publisher: Publisher, new_page: Callable[[], Any], user: str
) -> None:
    page = open_demo(new_page, server, f"?user={user}")
    rows = page.locator("#orders tbody tr[data-id]")
    publisher.broadcast_update("order", "created", {"id": 7, "status": "pending", "total": 12.5}, user_id=user)
    publisher.broadcast_update("order", "created", {"id": 8, "status": "pending", "total": 99}, user_id=user)
    publisher.broadcast_update("customer", "created", {"id": 7, "name": "not an order"}, user_id=user)
    last = publisher.broadcast_update("order", "updated", {"id": 7, "status": "shipped"}, user_id=user)
    wait_event(page, last)
    assert rows.count() == 2
    row7 = page.locator('#orders tr[data-id="7"]')
    assert row7.locator("td").nth(0).inner_text() == "shipped"
    assert row7.locator("td").nth(1).inner_text() == "12.50"  # kept from "created"
    assert row7.get_attribute("data-action") == "updated"
    assert row7.locator("td").nth(3).inner_text() == str(last)
    deleted = publisher.broadcast_update("order", "deleted", {"id": 8}, user_id=user)
    wait_event(page, deleted)
    row8 = page.locator('#orders tr[data-id="8"]')
    assert row8.get_attribute("data-action") == "deleted"
    assert "deleted" in (row8.get_attribute("class") or "")
    row8.wait_for(state="detached", timeout=8000)  # removed from the table a few seconds later
    assert rows.count() == 1


def test_custom_events_and_http_publish(
    server: GunicornServer, publisher: Publisher, new_page: Callable[[], Any], user: str
) -> None:
    page = open_demo(new_page, server, f"?user={user}&listen=chat.message,build:done")
    a = publisher.publish("chat.message", {"from": "ada", "text": "hi"}, user_id=user)
    token = mint(server.secret, "backend", notifications={"publish": [f"user:{user}"]})
    status, body = http_publish(server, token, {"event": "build:done", "data": [1, 2, 3], "userId": user})
    assert status == 201
    b = body["id"]
    status, body = http_publish(
        server,
        token,
        {
            "event": "notification",
            "userId": user,
            "data": {"type": "notification", "notificationType": "success", "message": "From HTTP", "duration": 60000},
        },
    )
    c = body["id"]
    wait_event(page, c)
    got = [(e["type"], e["lastEventId"], e["data"]) for e in events(page)]
    assert got == [
        ("chat.message", str(a), {"from": "ada", "text": "hi"}),
        ("build:done", str(b), [1, 2, 3]),
        (
            "notification",
            str(c),
            {"type": "notification", "notificationType": "success", "message": "From HTTP", "duration": 60000},
        ),
    ]
    toast(page, "From HTTP").wait_for()
    log = page.locator("#log li")
    assert log.filter(has_text="chat.message").count() == 1
    assert log.filter(has_text="build:done").count() == 1


def test_the_page_form_publishes_every_kind(server: GunicornServer, new_page: Callable[[], Any], user: str) -> None:
    page = open_demo(new_page, server, f"?user={user}")
    page.get_by_label("Send to").select_option("me")  # so no other page sees them

    form = page.locator("#notify-form")
    form.get_by_label("Type").select_option("warning")
    form.get_by_label("Title").fill("Disk space")
    form.get_by_label("Message").fill("Only 3% left on /var")
    form.get_by_label("Duration (ms)").fill("30000")
    form.get_by_role("button", name="Publish notification").click()
    t = toast(page, "Only 3% left on /var")
    t.wait_for()
    assert t.get_attribute("data-type") == "warning"
    assert t.get_attribute("data-duration") == "30000"
    assert t.locator(".title").inner_text() == "Disk space"
    assert page.locator("#publish-result").get_attribute("data-ok") == "true"

    form = page.locator("#order-form")
    form.get_by_label("Action").select_option("created")
    form.get_by_label("Order id").fill("501")
    form.get_by_label("Status").select_option("paid")
    form.get_by_label("Total").fill("42.00")
    form.get_by_role("button", name="Publish order update").click()
    row = page.locator('#orders tr[data-id="501"]')
    row.wait_for()
    assert row.locator("td").nth(0).inner_text() == "paid"
    assert row.locator("td").nth(1).inner_text() == "42.00"

    form = page.locator("#custom-form")
    form.get_by_label("Event name").fill("deploy.finished")  # not listened to before: the form adds it
    form.get_by_label("Data (JSON)").fill('{"version": "1.4.2"}')
    form.get_by_role("button", name="Publish custom event").click()
    page.wait_for_function("demo.events.some(e => e.type === 'deploy.finished')")
    got = [e for e in events(page) if e["type"] == "deploy.finished"]
    assert [e["data"] for e in got] == [{"version": "1.4.2"}]
    assert page.locator("#log li.deploy\\.finished").count() == 1

    # invalid JSON is caught in the page, nothing is sent
    form.get_by_label("Data (JSON)").fill("{nope")
    form.get_by_role("button", name="Publish custom event").click()
    assert page.locator("#publish-result").get_attribute("data-ok") == "false"
    assert "not valid JSON" in page.locator("#publish-result").inner_text()


def test_reset_and_refusal_are_visible_on_the_demo(server: GunicornServer, new_page: Callable[[], Any]) -> None:
    # a last event id beyond the newest: the stream sends reset (unknown-id), the page says so
    page = open_demo(new_page, server, "?lastEventId=999999999999")
    page.wait_for_function("demo.events.some(e => e.type === 'reset')")
    reset = next(e for e in events(page) if e["type"] == "reset")
    assert reset["data"] == {"type": "reset", "reason": "unknown-id"}
    banner = page.locator("#banners .banner.reset")
    assert "unknown-id" in banner.inner_text()
    assert page.locator("#log li.reset").count() == 1

    # an invalid token: the refusal's error is shown, the state is "refused", and the page
    # recovers with a fresh token by itself
    page = new_page()
    page.goto(f"http://{server.host}:{server.port}/?token=not-a-jwt")
    page.wait_for_function("demo.events.some(e => e.type === 'error')")
    error = next(e for e in events(page) if e["type"] == "error")
    assert error["data"]["code"] == 401 and error["data"]["error"]
    assert page.locator("#state").inner_text() == "refused"
    alert = page.locator("#banners .banner.error")
    assert "401" in alert.inner_text() and alert.get_attribute("role") == "alert"
    page.wait_for_function("demo.state === 'open'", timeout=10_000)
