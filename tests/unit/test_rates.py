"""The settings of the abuse limits (``notifications.limits``), parsed without a database:
README "Limits". A connect rate is ``N/second|minute|hour|day`` (or ``N per minute``; ``0``,
``none``, ``off`` or empty turn it off); the exempt list is comma-separated addresses or
networks."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network, ip_network

import pytest

from notifications.limits import parse_networks, parse_rate

# ----------------------------------------------------------------------------------- rates


@pytest.mark.parametrize(
    "raw, count, period",
    [
        ("60/minute", 60, 60),
        ("5 per second", 5, 1),
        ("5/second", 5, 1),
        ("100/hour", 100, 3600),
        ("2/day", 2, 86400),
        ("10/minutes", 10, 60),  # plurals
        ("3 per hours", 3, 3600),
        ("7 per days", 7, 86400),
        (" 7 / second ", 7, 1),  # spaces around the parts
        ("60/MINUTE", 60, 60),  # any case
        ("600 PER Minute", 600, 60),
        ("100000/minute", 100000, 60),
        ("1/second", 1, 1),
    ],
)
def test_parse_rate(raw: str, count: int, period: int) -> None:
    rate = parse_rate(raw)
    assert rate is not None
    assert (rate.count, rate.period) == (count, period)


@pytest.mark.parametrize("raw", ["", "0", "none", "off", "NONE", " Off ", "  ", None, 0])
def test_parse_rate_off(raw: object) -> None:
    assert parse_rate(raw) is None


@pytest.mark.parametrize(
    "raw",
    [
        "fast",
        "60",
        "60/",
        "/minute",
        "60/week",
        "60/min",
        "60/s",
        "-1/minute",
        "1.5/second",
        "60//minute",
        "minute/60",
        "60/minute/second",
        "60/minute extra",
        "per minute",
        "sixty/minute",
        "60 minute",
        "1e3/minute",
        "false",
    ],
)
def test_parse_rate_refuses_garbage(raw: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse_rate(raw)
    assert repr(raw) in str(refused.value), "the message names the value"


# ------------------------------------------------------------------------------- networks


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("127.0.0.0/8,::1", (IPv4Network("127.0.0.0/8"), IPv6Network("::1/128"))),
        ("10.0.0.1", (IPv4Network("10.0.0.1/32"),)),
        ("10.1.2.3/8", (IPv4Network("10.0.0.0/8"),)),  # host bits are dropped, not refused
        (" 192.168.0.0/16 , fd00::/8 ", (IPv4Network("192.168.0.0/16"), IPv6Network("fd00::/8"))),
        ("2001:db8::1", (IPv6Network("2001:db8::1/128"),)),
        ("10.0.0.0/8,,172.16.0.0/12,", (ip_network("10.0.0.0/8"), ip_network("172.16.0.0/12"))),
        ("", ()),
        (" , ", ()),
        (None, ()),
    ],
)
def test_parse_networks(raw: object, expected: tuple[IPv4Network | IPv6Network, ...]) -> None:
    assert parse_networks(raw) == expected


@pytest.mark.parametrize(
    "raw", ["localhost", "10.0.0.0/33", "1.2.3", "256.0.0.1", "::g", "10.0.0.0/8;127.0.0.1", "127.0.0.1,nope"]
)
def test_parse_networks_refuses_what_is_not_an_address(raw: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse_networks(raw)
    assert repr(raw) in str(refused.value), "the message names the value"
