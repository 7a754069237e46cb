"""``flask notifications ...``: publish, token, prune, migrate, stats, inbox, disconnect, revoke."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import click
from flask.cli import AppGroup
from flask_jwt_extended import create_access_token

from .events import parse_duration
from .exceptions import NotificationsError
from .state import get_state

cli = AppGroup("notifications", help="Publish events, mint development tokens, manage the events table.")


def _duration(value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@cli.command("publish")
@click.argument("event")
@click.argument("data_json")
@click.option("--user", "user_id", help="Deliver only to this user's streams.")
@click.option("--channel", help="Deliver only to streams subscribed to this channel.")
@click.option("--inbox", is_flag=True, help="Keep it in the inbox too (EVENT must be notification).")
def publish_command(event: str, data_json: str, user_id: str | None, channel: str | None, inbox: bool) -> None:
    """Publish EVENT with DATA_JSON (any JSON value) and print its id."""
    from .publishing import append, build_event

    try:
        data = json.loads(data_json)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="DATA_JSON") from None
    try:
        click.echo(append([build_event(event, data, user_id, channel, inbox=inbox)])[0])
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    except NotificationsError as exc:
        raise click.ClickException(str(exc)) from None


def mint_token(subject: str, subscribe: tuple[str, ...] = (), publish: tuple[str, ...] = (), ttl: float = 3600) -> str:
    """A signed JWT for ``subject`` with an optional grant (development and tests)."""
    claims: dict[str, Any] = {}
    if subscribe or publish:
        claims["notifications"] = {"subscribe": list(subscribe), "publish": list(publish)}
    token: str = create_access_token(identity=subject, additional_claims=claims, expires_delta=timedelta(seconds=ttl))
    return token


@cli.command("token")
@click.argument("subject")
@click.option("--subscribe", multiple=True, help="A subscribe grant pattern (repeatable): channel, user:ID, prefix*.")
@click.option("--publish", multiple=True, help="A publish grant pattern (repeatable); '*' allows broadcasts.")
@click.option("--ttl", default="1h", show_default=True, help="Lifetime: seconds or 30s, 15m, 6h, 7d.")
def token_command(subject: str, subscribe: tuple[str, ...], publish: tuple[str, ...], ttl: str) -> None:
    """Print a JWT for SUBJECT signed with this app's key."""
    click.echo(mint_token(subject, subscribe, publish, _duration(ttl)))


@cli.command("prune")
@click.option("--older-than", default=None, help="Delete events older than this (default: NOTIFICATIONS_RETENTION).")
def prune_command(older_than: str | None) -> None:
    """Delete expired events (and stale limit rows) now, as the automatic pruner does, under the
    same cluster-wide lock (waiting for a pruner that holds it); print how many events."""
    state = get_state()
    age = _duration(older_than) if older_than is not None else None
    click.echo(state.pruner.prune_once(age, wait=True))


@cli.command("disconnect")
@click.argument("user_id", metavar="USER")
@click.option("--reason", default=None, help="Sent to the streams in their last error event.")
def disconnect_command(user_id: str, reason: str | None) -> None:
    """End every open stream of USER on every worker and machine; print how many were open."""
    from .control import disconnect

    try:
        click.echo(disconnect(user_id, reason))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


@cli.command("revoke")
@click.argument("user_id", metavar="USER")
def revoke_command(user_id: str) -> None:
    """Void every token of USER issued before now (and end their streams); print how many
    streams were open."""
    from .control import revoke_tokens

    try:
        click.echo(revoke_tokens(user_id))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


@cli.command("migrate")
def migrate_command() -> None:
    """Create or upgrade the events table."""
    from .migrate import upgrade

    state = get_state()
    upgrade(state.store.engine, state.names)
    click.echo("events table is up to date")


@cli.command("stats")
def stats_command() -> None:
    """Print JSON: events stored, oldest and newest id, open streams (when the per-user cap is on)."""
    state = get_state()
    stats = state.store.stats()
    stats["open_streams"] = state.limits.open_streams()
    click.echo(json.dumps(stats))


@cli.command("inbox")
@click.argument("user")
@click.option("--channel", "channels", multiple=True, help="Include this channel's notifications (repeatable).")
@click.option("--limit", default=20, show_default=True, help="How many of the newest items (1-100).")
@click.option("--unread", is_flag=True, help="Unread items only.")
def inbox_command(user: str, channels: tuple[str, ...], limit: int, unread: bool) -> None:
    """Print USER's newest inbox items (id, time, read state, title and message) and the unread count."""
    from . import inbox

    try:
        page = inbox.list(user, channels=channels, limit=limit, unread=unread)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    for item in page.items:
        title = item.data.get("title")
        text = f"{title}: {item.data.get('message')}" if title else str(item.data.get("message"))
        click.echo(f"{item.id}\t{item.created_at}\t{'read' if item.read else 'unread'}\t{text}")
    click.echo(f"unread: {page.unread}")
