"""Reading the ``NOTIFICATIONS_*`` settings (``notifications.config.read``) without an app: README
"Configuration". Every bad value is a ``ConfigError`` (a ``ValueError`` too) whose message names
the key; good values come back parsed; the environment fills what the config leaves out.
``normalize_database_url`` accepts the three PostgreSQL URL forms and never echoes a password."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from notifications.config import ConfigError, normalize_database_url, read


@pytest.fixture(autouse=True)
def _no_settings_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``read`` takes what the config dict lacks from the environment: none of it here."""
    for key in list(os.environ):
        if key.startswith(("NOTIFICATIONS_", "JWT_")) or key == "DATABASE_URL":
            monkeypatch.delenv(key)
    yield


def refused(key: str, value: Any) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        read({key: value})
    return caught.value


# Each bad value of each key, by what reads it.
BAD = [
    # true or false
    *[
        (key, value)
        for key in (
            "NOTIFICATIONS_AUTO_MIGRATE",
            "NOTIFICATIONS_CONNECT_MESSAGE",
            "NOTIFICATIONS_DEV_MODE",
            "NOTIFICATIONS_HTTP_ERRORS",
        )
        for value in ("maybe", "2", "yes please", "tru", None)
    ],
    # N/second|minute|hour|day, or 0 for none
    *[
        (key, value)
        for key in ("NOTIFICATIONS_CONNECT_RATE_PER_ADDRESS", "NOTIFICATIONS_CONNECT_RATE_PER_USER")
        for value in ("fast", "60", "60/week", "-1/minute", "1.5/second")
    ],
    ("NOTIFICATIONS_ENV", "staging"),
    ("NOTIFICATIONS_ENV", "prod"),
    ("NOTIFICATIONS_ENV", ""),
    # durations: seconds or 30s, 15m, 6h, 7d
    *[
        (key, value)
        for key in (
            "NOTIFICATIONS_EXPIRY_WARNING",
            "NOTIFICATIONS_PRUNE_INTERVAL",
            "NOTIFICATIONS_RETENTION",
            "NOTIFICATIONS_TICKET_TTL",
            "NOTIFICATIONS_MAX_STREAM_LIFETIME",
            "NOTIFICATIONS_STREAM_LEASE",
        )
        for value in ("soon", "10x", "-5s", "1w", True)
    ],
    ("NOTIFICATIONS_STREAM_LEASE", "0.5"),  # a lease shorter than a second
    ("NOTIFICATIONS_STREAM_LEASE", "0"),
    # numbers with a floor
    ("NOTIFICATIONS_HEARTBEAT_INTERVAL", "fast"),
    ("NOTIFICATIONS_HEARTBEAT_INTERVAL", "0.01"),
    ("NOTIFICATIONS_HEARTBEAT_INTERVAL", "0"),
    ("NOTIFICATIONS_HEARTBEAT_INTERVAL", "-1"),
    ("NOTIFICATIONS_HEARTBEAT_INTERVAL", ""),
    ("NOTIFICATIONS_LISTENER_PROBE_INTERVAL", "0.05"),
    ("NOTIFICATIONS_LISTENER_PROBE_INTERVAL", "often"),
    *[
        (key, value)
        for key in (
            "NOTIFICATIONS_MAX_BODY_BYTES",
            "NOTIFICATIONS_MAX_PAYLOAD_BYTES",
            "NOTIFICATIONS_POOL_SIZE",
            "NOTIFICATIONS_QUEUE_SIZE",
            "NOTIFICATIONS_REFUSAL_RETRY_MS",
            "NOTIFICATIONS_REPLAY_CONCURRENCY",
            "NOTIFICATIONS_RETRY_MS",
            "NOTIFICATIONS_RETENTION_MAX_EVENTS",
        )
        for value in ("0", "-3", "ten", "1.5", "1e3")
    ],
    ("NOTIFICATIONS_MAX_STREAMS_PER_USER", "-1"),
    ("NOTIFICATIONS_MAX_STREAMS_PER_USER", "many"),
    ("NOTIFICATIONS_MAX_STREAMS_PER_USER", "2.5"),
    ("NOTIFICATIONS_TOKEN_CACHE", "-1"),
    ("NOTIFICATIONS_TOKEN_CACHE", "lots"),
    ("NOTIFICATIONS_TOKEN_CACHE", ""),
    # channel names
    ("NOTIFICATIONS_PUBLIC_CHANNELS", "bad name"),
    ("NOTIFICATIONS_PUBLIC_CHANNELS", "news,"),
    ("NOTIFICATIONS_PUBLIC_CHANNELS", "news,st*r"),
    ("NOTIFICATIONS_PUBLIC_CHANNELS", ",".join(f"c{i}" for i in range(51))),
    # addresses and networks
    ("NOTIFICATIONS_RATE_LIMIT_EXEMPT", "localhost"),
    ("NOTIFICATIONS_RATE_LIMIT_EXEMPT", "10.0.0.0/33"),
    ("NOTIFICATIONS_RATE_LIMIT_EXEMPT", "127.0.0.1,nope"),
    # identifiers: up to 40 letters, digits and '_', not starting with a digit
    *[
        (key, value)
        for key in ("NOTIFICATIONS_TABLE", "NOTIFICATIONS_SCHEMA")
        for value in ("9events", "events-2", "events;drop", "ev ents", "\u00e9v", "e" * 41)
    ],
    ("NOTIFICATIONS_TABLE", ""),
]


@pytest.mark.parametrize("key, value", BAD)
def test_a_bad_value_is_a_config_error_naming_the_key(key: str, value: Any) -> None:
    error = refused(key, value)
    assert isinstance(error, ValueError)
    assert key in str(error)


@pytest.mark.parametrize(
    "value",
    [
        "mysql://app:hunter2@db.example.com/app",
        "sqlite:///notifications.db",
        "postgresql+asyncpg://app:hunter2@db/app",
        "db.example.com/app",
    ],
)
def test_a_listen_url_that_is_not_postgresql_is_a_config_error(value: str) -> None:
    error = refused("NOTIFICATIONS_LISTEN_DATABASE_URL", value)
    assert isinstance(error, ValueError)
    assert "DATABASE_URL" in str(error)
    assert "hunter2" not in str(error)


def test_a_bad_listen_url_names_its_own_key() -> None:
    assert "NOTIFICATIONS_LISTEN_DATABASE_URL" in str(refused("NOTIFICATIONS_LISTEN_DATABASE_URL", "mysql://db/app"))


def test_a_heartbeat_interval_that_is_not_a_number_is_refused() -> None:
    refused("NOTIFICATIONS_HEARTBEAT_INTERVAL", "nan")


# A good value of a key, and the ``Settings`` field it becomes.
GOOD = [
    ("NOTIFICATIONS_AUTO_MIGRATE", "yes", "auto_migrate", True),
    ("NOTIFICATIONS_AUTO_MIGRATE", " OFF ", "auto_migrate", False),
    ("NOTIFICATIONS_CONNECT_MESSAGE", "0", "connect_message", False),
    ("NOTIFICATIONS_DEV_MODE", "on", "dev_mode", True),
    ("NOTIFICATIONS_HTTP_ERRORS", "", "http_errors", False),
    ("NOTIFICATIONS_HTTP_ERRORS", True, "http_errors", True),
    ("NOTIFICATIONS_ENV", " Production ", "env", "production"),
    ("NOTIFICATIONS_ENV", "testing", "env", "testing"),
    ("NOTIFICATIONS_EXPIRY_WARNING", "15m", "expiry_warning", 900.0),
    ("NOTIFICATIONS_EXPIRY_WARNING", "90", "expiry_warning", 90.0),
    ("NOTIFICATIONS_RETENTION", "7d", "retention", 604800.0),
    ("NOTIFICATIONS_RETENTION", 30, "retention", 30.0),
    ("NOTIFICATIONS_TICKET_TTL", "1.5s", "ticket_ttl", 1.5),
    ("NOTIFICATIONS_PRUNE_INTERVAL", "6h", "prune_interval", 21600.0),
    ("NOTIFICATIONS_MAX_STREAM_LIFETIME", "", "max_stream_lifetime", 0.0),  # empty: never
    ("NOTIFICATIONS_MAX_STREAM_LIFETIME", "2h", "max_stream_lifetime", 7200.0),
    ("NOTIFICATIONS_STREAM_LEASE", "1", "stream_lease", 1.0),
    ("NOTIFICATIONS_STREAM_LEASE", "2m", "stream_lease", 120.0),
    ("NOTIFICATIONS_HEARTBEAT_INTERVAL", "0.05", "heartbeat_interval", 0.05),
    ("NOTIFICATIONS_HEARTBEAT_INTERVAL", "15", "heartbeat_interval", 15.0),
    ("NOTIFICATIONS_LISTENER_PROBE_INTERVAL", "0.1", "listener_probe_interval", 0.1),
    ("NOTIFICATIONS_POOL_SIZE", "1", "pool_size", 1),
    ("NOTIFICATIONS_RETRY_MS", 250, "retry_ms", 250),
    ("NOTIFICATIONS_MAX_STREAMS_PER_USER", "0", "max_streams_per_user", 0),  # 0: no cap
    ("NOTIFICATIONS_MAX_STREAMS_PER_USER", "", "max_streams_per_user", 0),
    ("NOTIFICATIONS_TOKEN_CACHE", "0", "token_cache", 0),
    ("NOTIFICATIONS_RETENTION_MAX_EVENTS", "", "retention_max_events", None),
    ("NOTIFICATIONS_RETENTION_MAX_EVENTS", "100", "retention_max_events", 100),
    ("NOTIFICATIONS_PUBLIC_CHANNELS", "news, status,news", "public_channels", frozenset({"news", "status"})),
    ("NOTIFICATIONS_PUBLIC_CHANNELS", "", "public_channels", frozenset()),
    ("NOTIFICATIONS_RATE_LIMIT_EXEMPT", "", "rate_limit_exempt", ()),
    ("NOTIFICATIONS_SCHEMA", "", "schema", None),
    ("NOTIFICATIONS_SCHEMA", "notif_1", "schema", "notif_1"),
    ("NOTIFICATIONS_TABLE", "_events2", "table", "_events2"),
    ("NOTIFICATIONS_TABLE", "e" * 40, "table", "e" * 40),
    ("NOTIFICATIONS_LISTEN_DATABASE_URL", "", "listen_database_url", None),
    (
        "NOTIFICATIONS_LISTEN_DATABASE_URL",
        "postgres://app@db:5432/app",
        "listen_database_url",
        "postgresql+psycopg2://app@db:5432/app",
    ),
    ("NOTIFICATIONS_CORS_ORIGINS", None, "cors_origins", ""),
]


@pytest.mark.parametrize("key, value, field, expected", GOOD)
def test_a_good_value_is_parsed(key: str, value: Any, field: str, expected: Any) -> None:
    assert getattr(read({key: value}), field) == expected


@pytest.mark.parametrize(
    "key, value, count, period",
    [
        ("NOTIFICATIONS_CONNECT_RATE_PER_USER", "5 per second", 5, 1),
        ("NOTIFICATIONS_CONNECT_RATE_PER_ADDRESS", "100/hour", 100, 3600),
    ],
)
def test_a_rate_is_parsed(key: str, value: str, count: int, period: int) -> None:
    rate = getattr(read({key: value}), key.removeprefix("NOTIFICATIONS_").lower())
    assert (rate.count, rate.period) == (count, period)


@pytest.mark.parametrize("value", ["0", "none", "", "off"])
def test_a_rate_of_zero_is_off(value: str) -> None:
    assert read({"NOTIFICATIONS_CONNECT_RATE_PER_USER": value}).connect_rate_per_user is None


def test_production_follows_the_environment_name() -> None:
    assert read({"NOTIFICATIONS_ENV": "production"}).production is True
    assert read({"NOTIFICATIONS_ENV": "testing"}).production is False
    assert read({}).production is False


def test_read_fills_the_config_with_the_defaults() -> None:
    config: dict[str, Any] = {"NOTIFICATIONS_RETRY_MS": 1234}
    read(config)
    assert config["NOTIFICATIONS_RETRY_MS"] == 1234
    assert config["NOTIFICATIONS_TABLE"] == "notification_events"
    assert config["NOTIFICATIONS_CONNECT_RATE_PER_USER"] == "60/minute"


def test_the_environment_fills_what_the_config_lacks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFICATIONS_RETRY_MS", "777")
    monkeypatch.setenv("NOTIFICATIONS_QUEUE_SIZE", "55")
    settings = read({"NOTIFICATIONS_QUEUE_SIZE": 66})
    assert settings.retry_ms == 777
    assert settings.queue_size == 66  # the config wins


def test_a_bad_value_from_the_environment_is_refused_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFICATIONS_RETRY_MS", "0")
    with pytest.raises(ConfigError, match="NOTIFICATIONS_RETRY_MS"):
        read({})


# ------------------------------------------------------------------------ normalize_database_url


@pytest.mark.parametrize(
    "url, expected",
    [
        ("postgres://app:pw@db:5432/app", "postgresql+psycopg2://app:pw@db:5432/app"),
        ("postgresql://db/app", "postgresql+psycopg2://db/app"),
        ("postgresql+psycopg2://app@127.0.0.1:5433/app?sslmode=require", None),  # already the form
        ("postgresql:///app?host=/var/run/postgresql", "postgresql+psycopg2:///app?host=/var/run/postgresql"),
    ],
)
def test_normalize_database_url(url: str, expected: str | None) -> None:
    assert normalize_database_url(url) == (expected or url)


@pytest.mark.parametrize(
    "url",
    [
        "mysql://app:hunter2@db/app",
        "postgresql+asyncpg://app:hunter2@db/app",
        "postgresql+psycopg://app:hunter2@db/app",  # psycopg 3: the service always uses psycopg2
        "sqlite:///notifications.db",
        "db/app",
        "",
    ],
)
def test_normalize_database_url_refuses_others_without_showing_the_password(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        normalize_database_url(url)
    error = caught.value
    assert isinstance(error, ValueError)
    assert "DATABASE_URL" in str(error)
    assert "hunter2" not in str(error)
