"""The demo page's bell: the unread badge and the dropdown list, kept in sync between two windows
of one user by the stream's ``inbox`` events (README "The inbox")."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from notifications import inbox
from tests.support.publisher import Publisher
from tests.support.server import GunicornServer

from .conftest import events, open_demo


def clean_slate(publisher: Publisher, user: str) -> None:
    """Dismiss what the user's inbox holds already (broadcasts of other tests)."""
    with publisher.app.app_context():
        while items := inbox.list(user, limit=100).items:
            inbox.dismiss(user, [i.id for i in items])


def badge(page: Any) -> str:
    """What the badge shows ("" when hidden)."""
    shown: str = page.evaluate(
        "(() => { const b = document.getElementById('inbox-badge'); return b.hidden ? '' : b.textContent })()"
    )
    return shown


def wait_badge(page: Any, text: str) -> None:
    page.wait_for_function(
        "t => { const b = document.getElementById('inbox-badge'); return (b.hidden ? '' : b.textContent) === t }",
        arg=text,
    )


def item(page: Any, event_id: int) -> Any:
    return page.locator(f'#inbox-list li[data-id="{event_id}"]')


def test_the_bell_stays_in_sync_between_two_windows(
    server: GunicornServer, publisher: Publisher, new_page: Callable[[], Any], user: str
) -> None:
    clean_slate(publisher, user)
    one = open_demo(new_page, server, f"?user={user}")
    two = open_demo(new_page, server, f"?user={user}")
    for page in (one, two):
        page.wait_for_function("demo.inbox.fetches >= 1")
        assert badge(page) == ""
    first, second, third = (
        publisher.notify(f"Order #{n} shipped", title=f"Order {n}", user_id=user, inbox=True, duration=60_000)
        for n in (1, 2, 3)
    )
    for page in (one, two):
        wait_badge(page, "3")
        page.get_by_role("button", name="Inbox, 3 unread").click()
        page.locator("#inbox-panel").wait_for()
        item(page, first).wait_for()
        rows = page.locator("#inbox-list li[data-id]")
        assert [rows.nth(i).get_attribute("data-id") for i in range(3)] == [str(third), str(second), str(first)]
        assert rows.nth(0).locator(".title").inner_text() == "Order 3"
        assert rows.nth(0).locator(".message").inner_text() == "Order #3 shipped"
        assert "unread" in (rows.nth(0).get_attribute("class") or "").split()

    # window one marks one read: window two's badge and list follow, through the stream
    item(one, second).get_by_role("button", name="Mark read").click()
    wait_badge(two, "2")
    two.wait_for_function(f"document.querySelector('#inbox-list li[data-id=\"{second}\"]').classList.contains('read')")
    assert item(two, second).get_by_role("button", name="Mark unread").count() == 1
    synced = [e["data"] for e in events(two, ("inbox",))]
    assert synced == [{"type": "inbox", "action": "read", "ids": [str(second)], "unread": 2}]

    # window two dismisses one: it is gone from window one's list
    item(two, first).get_by_role("button", name="Dismiss").click()
    item(one, first).wait_for(state="detached")
    wait_badge(one, "1")
    assert one.locator("#inbox-list li[data-id]").count() == 2

    # window one marks all read: window two's badge goes away, every item there is read
    one.get_by_role("button", name="Mark all read").click()
    wait_badge(two, "")
    two.wait_for_function(
        "[...document.querySelectorAll('#inbox-list li[data-id]')].every(li => li.classList.contains('read'))"
    )
    assert two.locator("#inbox-unread").inner_text() == "0 unread"

    # window two marks one unread again; a new notification arrives in both, unread
    item(two, third).get_by_role("button", name="Mark unread").click()
    wait_badge(one, "1")
    fourth = publisher.notify("Order #4 shipped", title="Order 4", user_id=user, inbox=True, duration=60_000)
    for page in (one, two):
        wait_badge(page, "2")
        item(page, fourth).wait_for()
        assert [page.locator("#inbox-list li[data-id]").nth(i).get_attribute("data-id") for i in range(3)] == [
            str(fourth),
            str(third),
            str(second),
        ]


def test_the_form_keeps_a_notification_in_the_inbox(
    server: GunicornServer, new_page: Callable[[], Any], user: str, publisher: Publisher
) -> None:
    clean_slate(publisher, user)
    page = open_demo(new_page, server, f"?user={user}")
    page.wait_for_function("demo.inbox.fetches >= 1")
    page.get_by_label("Send to").select_option("me")
    form = page.locator("#notify-form")
    form.get_by_label("Message").fill("Kept for later")
    assert form.get_by_label("Keep it in the inbox too").is_checked()
    form.get_by_role("button", name="Publish notification").click()
    wait_badge(page, "1")
    page.locator("#bell").click()
    kept = page.locator("#inbox-list li[data-id]", has_text="Kept for later")
    kept.wait_for()
    toast = next(e for e in events(page, ("notification",)) if e["data"].get("message") == "Kept for later")
    assert toast["data"]["inbox"] is True
    form.get_by_label("Keep it in the inbox too").uncheck()
    form.get_by_label("Message").fill("Only a toast")
    form.get_by_role("button", name="Publish notification").click()
    page.wait_for_function("demo.events.some(e => e.data && e.data.message === 'Only a toast')")
    assert badge(page) == "1"
    assert page.locator("#inbox-list li[data-id]").count() == 1
