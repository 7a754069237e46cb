"""The ``NOTIFICATIONS_*`` settings: declared once, with defaults, read from the app config or
the environment, validated at ``init_app`` with errors that name the key."""

from __future__ import annotations

import math
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from typing import Any

from .events import parse_channels, parse_duration
from .exceptions import ConfigError as ConfigError  # raised here; importable from here too
from .limits import Rate, parse_networks, parse_rate

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
            finite = math.isfinite(number)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{key}={value!r}: expected a number") from None
        if not finite:
            raise ConfigError(f"{key}={value!r}: expected a finite number")
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


def normalize_database_url(url: str, key: str = "DATABASE_URL") -> str:
    """Always psycopg2: accept ``postgres://``, ``postgresql://`` and ``postgresql+psycopg2://``
    (``key``: the setting it came from, for the error)."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix) :]
    if url.startswith("postgresql+psycopg2://"):
        return url
    raise ConfigError(f"{key}={url.split('@')[-1]!r}: expected a postgresql:// URL")


def _env(key: str, value: Any) -> str:
    env = str(value).strip().lower()
    if env not in ("development", "production", "testing"):
        raise ConfigError(f"{key}={env!r}: one of development, production, testing")
    return env


def _channels(key: str, value: Any) -> frozenset[str]:
    try:
        return frozenset(parse_channels(str(value or "")))
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from None


def _identifier(key: str, value: Any) -> str:
    if not (_IDENTIFIER.fullmatch(str(value)) and len(str(value)) <= 40):
        raise ConfigError(f"{key}={value!r}: up to 40 letters, digits and '_', not starting with a digit")
    return str(value)


def _or_zero(convert: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    """``convert``, with an empty value read as 0 (off)."""
    return lambda key, value: convert(key, value or 0)


def _presence(key: str, value: Any) -> str:
    text = str(value).strip().lower()
    if text in _TRUE:
        return "on"
    if text in _FALSE - {""}:
        return "off"
    if text in ("auto", ""):
        return "auto"
    raise ConfigError(f"{key}={value!r}: one of auto, on, off")


def _text(key: str, value: Any) -> str:
    return str(value or "")


def _lease(key: str, value: Any) -> float:
    return float(_number(float, 1)(key, _duration(key, value)))


def _url(key: str, value: Any) -> str:
    return normalize_database_url(str(value), key)


_positive = _number(int, 1)


@dataclass(frozen=True)
class Key:
    """One ``NOTIFICATIONS_*`` setting: its ``Settings`` field, default, parser and what the
    README's configuration table shows as its default."""

    name: str
    field: str
    default: Any
    parse: Callable[[str, Any], Any]
    shown: str


# Every key, alphabetised: the one list. ``Settings`` has a field for each (``read`` builds it
# from here), and tests/unit/test_config_spec.py holds the README's table to it.
SPEC: tuple[Key, ...] = (
    Key("NOTIFICATIONS_AUTO_MIGRATE", "auto_migrate", True, _bool, "`true`"),
    Key("NOTIFICATIONS_CONNECT_MESSAGE", "connect_message", True, _bool, "`true`"),
    Key("NOTIFICATIONS_CONNECT_RATE_PER_ADDRESS", "connect_rate_per_address", "600/minute", _rate, "`600/minute`"),
    Key("NOTIFICATIONS_CONNECT_RATE_PER_USER", "connect_rate_per_user", "60/minute", _rate, "`60/minute`"),
    Key("NOTIFICATIONS_CORS_ORIGINS", "cors_origins", "", _text, "empty (no CORS)"),
    Key("NOTIFICATIONS_DEV_MODE", "dev_mode", False, _bool, "off"),
    Key("NOTIFICATIONS_ENV", "env", "development", _env, "`development`"),
    Key("NOTIFICATIONS_EXPIRY_WARNING", "expiry_warning", "60s", _duration, "`60s`"),
    Key("NOTIFICATIONS_HEARTBEAT_INTERVAL", "heartbeat_interval", 30.0, _number(float, 0.05), "`30`"),
    Key("NOTIFICATIONS_HTTP_ERRORS", "http_errors", False, _bool, "`false`"),
    Key("NOTIFICATIONS_INBOX_RETENTION", "inbox_retention", "90d", _duration, "`90d`"),
    Key("NOTIFICATIONS_LISTEN_DATABASE_URL", "listen_database_url", None, _optional(_url), "`DATABASE_URL`"),
    Key("NOTIFICATIONS_LISTENER_PROBE_INTERVAL", "listener_probe_interval", 5.0, _number(float, 0.1), "`5`"),
    Key("NOTIFICATIONS_MAX_BODY_BYTES", "max_body_bytes", 4194304, _positive, "`4194304`"),
    Key("NOTIFICATIONS_MAX_PAYLOAD_BYTES", "max_payload_bytes", 65536, _positive, "`65536`"),
    Key("NOTIFICATIONS_MAX_STREAM_LIFETIME", "max_stream_lifetime", "1h", _or_zero(_duration), "`1h`"),
    Key("NOTIFICATIONS_MAX_STREAMS_PER_USER", "max_streams_per_user", 10, _or_zero(_number(int, 0)), "`10`"),
    Key("NOTIFICATIONS_POOL_SIZE", "pool_size", 5, _positive, "`5`"),
    Key("NOTIFICATIONS_PRESENCE", "presence", "auto", _presence, "`auto`"),
    Key("NOTIFICATIONS_PRUNE_INTERVAL", "prune_interval", "60s", _duration, "`60s`"),
    Key("NOTIFICATIONS_PUBLIC_CHANNELS", "public_channels", "", _channels, "empty"),
    Key("NOTIFICATIONS_QUEUE_SIZE", "queue_size", 1000, _positive, "`1000`"),
    Key("NOTIFICATIONS_RATE_LIMIT_EXEMPT", "rate_limit_exempt", "127.0.0.0/8,::1", _networks, "`127.0.0.0/8,::1`"),
    Key("NOTIFICATIONS_REFUSAL_RETRY_MS", "refusal_retry_ms", 30000, _positive, "`30000`"),
    Key("NOTIFICATIONS_REPLAY_CONCURRENCY", "replay_concurrency", 8, _positive, "`8`"),
    Key("NOTIFICATIONS_RETENTION", "retention", "7d", _duration, "`7d`"),
    Key("NOTIFICATIONS_RETENTION_MAX_EVENTS", "retention_max_events", None, _optional(_positive), "none"),
    Key("NOTIFICATIONS_RETRY_MS", "retry_ms", 3000, _positive, "`3000`"),
    Key("NOTIFICATIONS_SCHEMA", "schema", None, _optional(_identifier), "none (search path)"),
    Key("NOTIFICATIONS_STREAM_LEASE", "stream_lease", "30s", _lease, "`30s`"),
    Key("NOTIFICATIONS_TABLE", "table", "notification_events", _identifier, "`notification_events`"),
    Key("NOTIFICATIONS_TICKET_TTL", "ticket_ttl", "30s", _duration, "`30s`"),
    Key("NOTIFICATIONS_TOKEN_CACHE", "token_cache", 10000, _number(int, 0), "`10000`"),
)
DEFAULTS: dict[str, Any] = {key.name: key.default for key in SPEC}


@dataclass(frozen=True)
class Settings:
    """Typed, validated settings of one app: a field for each key of ``SPEC``."""

    auto_migrate: bool
    connect_message: bool
    connect_rate_per_address: Rate | None
    connect_rate_per_user: Rate | None
    cors_origins: str
    dev_mode: bool
    env: str
    expiry_warning: float
    heartbeat_interval: float
    http_errors: bool
    inbox_retention: float
    listen_database_url: str | None
    listener_probe_interval: float
    max_body_bytes: int
    max_payload_bytes: int
    max_stream_lifetime: float
    max_streams_per_user: int
    pool_size: int
    presence: str
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

    @property
    def production(self) -> bool:
        return self.env == "production"


def read(config: dict[str, Any]) -> Settings:
    """Fill ``config`` with defaults (environment first) and return the validated settings."""
    for key in (*DEFAULTS, *PASSTHROUGH_KEYS):
        if key not in config and key in os.environ:
            config[key] = os.environ[key]
    for name, default in DEFAULTS.items():
        config.setdefault(name, default)
    return Settings(**{key.field: key.parse(key.name, config[key.name]) for key in SPEC})


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
