"""The ``NOTIFICATIONS_*`` settings: declared once, with defaults, read from the app config or
the environment, validated at ``init_app`` with errors that name the key."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from typing import Any

from .events import parse_channels, parse_duration
from .limits import Rate, parse_networks, parse_rate

# Every key with its default, alphabetised. Values may be given as strings (environment).
DEFAULTS: dict[str, Any] = {
    "NOTIFICATIONS_AUTO_MIGRATE": True,
    "NOTIFICATIONS_CONNECT_MESSAGE": True,
    "NOTIFICATIONS_CONNECT_RATE_PER_ADDRESS": "600/minute",
    "NOTIFICATIONS_CONNECT_RATE_PER_USER": "60/minute",
    "NOTIFICATIONS_CORS_ORIGINS": "",
    "NOTIFICATIONS_DEV_MODE": False,
    "NOTIFICATIONS_ENV": "development",
    "NOTIFICATIONS_EXPIRY_WARNING": "60s",
    "NOTIFICATIONS_HEARTBEAT_INTERVAL": 30.0,
    "NOTIFICATIONS_HTTP_ERRORS": False,
    "NOTIFICATIONS_LISTEN_DATABASE_URL": None,
    "NOTIFICATIONS_LISTENER_PROBE_INTERVAL": 5.0,
    "NOTIFICATIONS_MAX_BODY_BYTES": 4194304,
    "NOTIFICATIONS_MAX_PAYLOAD_BYTES": 65536,
    "NOTIFICATIONS_MAX_STREAM_LIFETIME": "1h",
    "NOTIFICATIONS_MAX_STREAMS_PER_USER": 10,
    "NOTIFICATIONS_POOL_SIZE": 5,
    "NOTIFICATIONS_PRUNE_INTERVAL": "60s",
    "NOTIFICATIONS_PUBLIC_CHANNELS": "",
    "NOTIFICATIONS_QUEUE_SIZE": 1000,
    "NOTIFICATIONS_RATE_LIMIT_EXEMPT": "127.0.0.0/8,::1",
    "NOTIFICATIONS_REFUSAL_RETRY_MS": 30000,
    "NOTIFICATIONS_REPLAY_CONCURRENCY": 8,
    "NOTIFICATIONS_RETENTION": "7d",
    "NOTIFICATIONS_RETENTION_MAX_EVENTS": None,
    "NOTIFICATIONS_RETRY_MS": 3000,
    "NOTIFICATIONS_SCHEMA": None,
    "NOTIFICATIONS_STREAM_LEASE": "30s",
    "NOTIFICATIONS_TABLE": "notification_events",
    "NOTIFICATIONS_TICKET_TTL": "30s",
    "NOTIFICATIONS_TOKEN_CACHE": 10000,
}
# Keys owned by other libraries that this package also reads from the environment.
PASSTHROUGH_KEYS = (
    "DATABASE_URL",
    "JWT_ALGORITHM",
    "JWT_DECODE_ALGORITHMS",
    "JWT_DECODE_AUDIENCE",
    "JWT_DECODE_ISSUER",
    "JWT_PRIVATE_KEY",
    "JWT_PUBLIC_KEY",
    "JWT_SECRET_KEY",
)

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key and what it accepts."""


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"{key}={value!r}: expected true or false")


def _number(kind: Callable[[Any], Any], minimum: float) -> Callable[[str, Any], Any]:
    def convert(key: str, value: Any) -> Any:
        try:
            number = kind(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}={value!r}: expected a number") from None
        if number < minimum:
            raise ConfigError(f"{key}={value!r}: must be at least {minimum}")
        return number

    return convert


def _duration(key: str, value: Any) -> float:
    try:
        return parse_duration(value)
    except ValueError:
        raise ConfigError(f"{key}={value!r}: expected seconds or 30s, 15m, 6h, 7d") from None


def _networks(key: str, value: Any) -> tuple[IPv4Network | IPv6Network, ...]:
    try:
        return parse_networks(value)
    except ValueError:
        raise ConfigError(f"{key}={value!r}: expected comma-separated addresses or networks") from None


def _rate(key: str, value: Any) -> Rate | None:
    try:
        return parse_rate(value)
    except ValueError:
        raise ConfigError(f"{key}={value!r}: expected N/second, N/minute, N/hour, N/day, or 0 for none") from None


def _optional(convert: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    def wrapped(key: str, value: Any) -> Any:
        return None if value is None or value == "" else convert(key, value)

    return wrapped


def normalize_database_url(url: str) -> str:
    """Always psycopg2: accept ``postgres://``, ``postgresql://`` and ``postgresql+psycopg2://``."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix) :]
    if url.startswith("postgresql+psycopg2://"):
        return url
    raise ConfigError(f"DATABASE_URL={url.split('@')[-1]!r}: expected a postgresql:// URL")


@dataclass(frozen=True)
class Settings:
    """Typed, validated settings of one app."""

    auto_migrate: bool
    connect_message: bool
    connect_rate_per_address: Rate | None
    connect_rate_per_user: Rate | None
    cors_origins: str
    dev_mode: bool
    production: bool
    expiry_warning: float
    heartbeat_interval: float
    http_errors: bool
    listen_database_url: str | None
    listener_probe_interval: float
    max_body_bytes: int
    max_payload_bytes: int
    max_stream_lifetime: float
    max_streams_per_user: int
    pool_size: int
    prune_interval: float
    public_channels: frozenset[str]
    queue_size: int
    rate_limit_exempt: tuple[IPv4Network | IPv6Network, ...]
    refusal_retry_ms: int
    replay_concurrency: int
    retention: float
    retention_max_events: int | None
    retry_ms: int
    schema: str | None
    stream_lease: float
    table: str
    ticket_ttl: float
    token_cache: int


def read(config: dict[str, Any]) -> Settings:
    """Fill ``config`` with defaults (environment first) and return the validated settings."""
    for key in (*DEFAULTS, *PASSTHROUGH_KEYS):
        if key not in config and key in os.environ:
            config[key] = os.environ[key]
    for key, default in DEFAULTS.items():
        config.setdefault(key, default)
    env = str(config["NOTIFICATIONS_ENV"]).strip().lower()
    if env not in ("development", "production", "testing"):
        raise ConfigError(f"NOTIFICATIONS_ENV={env!r}: one of development, production, testing")
    try:
        public = frozenset(parse_channels(str(config["NOTIFICATIONS_PUBLIC_CHANNELS"] or "")))
    except ValueError as exc:
        raise ConfigError(f"NOTIFICATIONS_PUBLIC_CHANNELS: {exc}") from None
    table = str(config["NOTIFICATIONS_TABLE"])
    schema = config["NOTIFICATIONS_SCHEMA"] or None
    for key, name in (("NOTIFICATIONS_TABLE", table), ("NOTIFICATIONS_SCHEMA", schema)):
        if name is not None and not (_IDENTIFIER.fullmatch(str(name)) and len(str(name)) <= 40):
            raise ConfigError(f"{key}={name!r}: up to 40 letters, digits and '_', not starting with a digit")
    listen_url = _optional(lambda _k, v: normalize_database_url(str(v)))(
        "NOTIFICATIONS_LISTEN_DATABASE_URL", config["NOTIFICATIONS_LISTEN_DATABASE_URL"]
    )
    positive_int = _number(int, 1)
    return Settings(
        auto_migrate=_bool("NOTIFICATIONS_AUTO_MIGRATE", config["NOTIFICATIONS_AUTO_MIGRATE"]),
        connect_message=_bool("NOTIFICATIONS_CONNECT_MESSAGE", config["NOTIFICATIONS_CONNECT_MESSAGE"]),
        connect_rate_per_address=_rate(
            "NOTIFICATIONS_CONNECT_RATE_PER_ADDRESS", config["NOTIFICATIONS_CONNECT_RATE_PER_ADDRESS"]
        ),
        connect_rate_per_user=_rate(
            "NOTIFICATIONS_CONNECT_RATE_PER_USER", config["NOTIFICATIONS_CONNECT_RATE_PER_USER"]
        ),
        max_streams_per_user=_number(int, 0)(
            "NOTIFICATIONS_MAX_STREAMS_PER_USER", config["NOTIFICATIONS_MAX_STREAMS_PER_USER"] or 0
        ),
        ticket_ttl=_duration("NOTIFICATIONS_TICKET_TTL", config["NOTIFICATIONS_TICKET_TTL"]),
        cors_origins=str(config["NOTIFICATIONS_CORS_ORIGINS"] or ""),
        expiry_warning=_duration("NOTIFICATIONS_EXPIRY_WARNING", config["NOTIFICATIONS_EXPIRY_WARNING"]),
        max_stream_lifetime=_duration(
            "NOTIFICATIONS_MAX_STREAM_LIFETIME", config["NOTIFICATIONS_MAX_STREAM_LIFETIME"] or 0
        ),
        dev_mode=_bool("NOTIFICATIONS_DEV_MODE", config["NOTIFICATIONS_DEV_MODE"]),
        production=env == "production",
        heartbeat_interval=_number(float, 0.05)(
            "NOTIFICATIONS_HEARTBEAT_INTERVAL", config["NOTIFICATIONS_HEARTBEAT_INTERVAL"]
        ),
        http_errors=_bool("NOTIFICATIONS_HTTP_ERRORS", config["NOTIFICATIONS_HTTP_ERRORS"]),
        listen_database_url=listen_url,
        listener_probe_interval=_number(float, 0.1)(
            "NOTIFICATIONS_LISTENER_PROBE_INTERVAL", config["NOTIFICATIONS_LISTENER_PROBE_INTERVAL"]
        ),
        max_body_bytes=positive_int("NOTIFICATIONS_MAX_BODY_BYTES", config["NOTIFICATIONS_MAX_BODY_BYTES"]),
        max_payload_bytes=positive_int("NOTIFICATIONS_MAX_PAYLOAD_BYTES", config["NOTIFICATIONS_MAX_PAYLOAD_BYTES"]),
        pool_size=positive_int("NOTIFICATIONS_POOL_SIZE", config["NOTIFICATIONS_POOL_SIZE"]),
        prune_interval=_duration("NOTIFICATIONS_PRUNE_INTERVAL", config["NOTIFICATIONS_PRUNE_INTERVAL"]),
        public_channels=public,
        rate_limit_exempt=_networks("NOTIFICATIONS_RATE_LIMIT_EXEMPT", config["NOTIFICATIONS_RATE_LIMIT_EXEMPT"]),
        queue_size=positive_int("NOTIFICATIONS_QUEUE_SIZE", config["NOTIFICATIONS_QUEUE_SIZE"]),
        refusal_retry_ms=positive_int("NOTIFICATIONS_REFUSAL_RETRY_MS", config["NOTIFICATIONS_REFUSAL_RETRY_MS"]),
        replay_concurrency=positive_int("NOTIFICATIONS_REPLAY_CONCURRENCY", config["NOTIFICATIONS_REPLAY_CONCURRENCY"]),
        retention=_duration("NOTIFICATIONS_RETENTION", config["NOTIFICATIONS_RETENTION"]),
        retention_max_events=_optional(positive_int)(
            "NOTIFICATIONS_RETENTION_MAX_EVENTS", config["NOTIFICATIONS_RETENTION_MAX_EVENTS"]
        ),
        retry_ms=positive_int("NOTIFICATIONS_RETRY_MS", config["NOTIFICATIONS_RETRY_MS"]),
        schema=None if schema is None else str(schema),
        stream_lease=_number(float, 1)(
            "NOTIFICATIONS_STREAM_LEASE", _duration("NOTIFICATIONS_STREAM_LEASE", config["NOTIFICATIONS_STREAM_LEASE"])
        ),
        table=table,
        token_cache=_number(int, 0)("NOTIFICATIONS_TOKEN_CACHE", config["NOTIFICATIONS_TOKEN_CACHE"]),
    )


def development_key(instance_path: str) -> str:
    """The development JWT key kept in the instance folder, created on first use (0600), so
    every worker and restart signs and checks tokens with the same key."""
    path = os.path.join(instance_path, "dev-jwt-secret")
    os.makedirs(instance_path, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        with open(path) as existing:
            key = existing.read().strip()
        if key:
            return key
        raise ConfigError(f"{path} is empty: delete it to generate a new development key") from None
    with os.fdopen(fd, "w") as new:
        new.write(secrets.token_urlsafe(32))
    return development_key(instance_path)
