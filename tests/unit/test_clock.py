"""notifications.clock: a timestamp rendered once per second, equal to what gunicorn writes."""

from __future__ import annotations

import time
from email.utils import formatdate

import pytest

from notifications import clock
from notifications.clock import SecondClock


class FakeTime:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_renders_once_per_second_and_again_when_the_second_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeTime(1_700_000_000.1)
    monkeypatch.setattr(clock.time, "time", fake)
    rendered: list[int] = []
    tick = SecondClock(lambda second: rendered.append(second) or f"t={second}")
    assert tick() == "t=1700000000"
    fake.now = 1_700_000_000.9
    assert tick() == "t=1700000000"
    fake.now = 1_700_000_001.0
    assert tick() == "t=1700000001"
    assert rendered == [1_700_000_000, 1_700_000_001]


def test_http_date_is_gunicorns_date_header() -> None:
    for _ in range(3):  # a second may turn between the two reads
        second = int(time.time())
        text = clock.http_date()
        if int(time.time()) == second:
            assert text == formatdate(second, usegmt=True)
            return
    pytest.fail("the clock kept turning")


def test_common_log_time_is_gunicorns_access_log_time() -> None:
    for _ in range(3):
        expected = time.strftime("[%d/%b/%Y:%H:%M:%S %z]")
        if clock.common_log_time() == expected:
            return
    pytest.fail(f"{clock.common_log_time()!r} != {expected!r}")
