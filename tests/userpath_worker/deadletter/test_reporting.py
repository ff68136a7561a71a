"""The dead-letter WARNING line: one per reason and key, at most once a minute each, with the count."""

from __future__ import annotations

import logging

import pytest

from tests.common.clock import FakeClock
from userpath_worker.deadletter.reporting import DeadLetterReporter


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def reporter(clock: FakeClock) -> DeadLetterReporter:
    return DeadLetterReporter(interval=60, clock=clock)


def lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str, int]]:
    found = [(r.reason, r.key, r.dead_lettered) for r in caplog.records if r.levelno == logging.WARNING]
    caplog.clear()
    return found


def test_one_line_per_reason_and_key_a_minute_with_the_count_since_the_last(
    reporter: DeadLetterReporter, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "userpath.worker")
    reporter.report([({"unknown_key": 1}, "up_live_abcd…wxyz"), ({"unknown_key": 2}, None)])
    assert lines(caplog) == [("unknown_key", "up_live_abcd…wxyz", 1), ("unknown_key", "malformed", 2)]

    clock.now += 30
    reporter.report([({"unknown_key": 1}, "up_live_abcd…wxyz")] * 3 + [({"invalid_event": 2}, "up_live_abcd…wxyz")])
    assert lines(caplog) == [("invalid_event", "up_live_abcd…wxyz", 2)]  # a new reason: at once

    clock.now += 29.9
    reporter.report([({"unknown_key": 1}, "up_live_abcd…wxyz")])
    assert lines(caplog) == []

    clock.now += 0.1  # a minute after the first line: the four counted since
    reporter.report([({}, None)])
    assert lines(caplog) == [("unknown_key", "up_live_abcd…wxyz", 4)]

    clock.now += 60
    reporter.report([({"unknown_key": 1}, None)])
    assert lines(caplog) == [("unknown_key", "malformed", 1)]


def test_the_line_names_the_reason_key_and_count(
    reporter: DeadLetterReporter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "userpath.worker")
    reporter.report([({"expired_key": 3}, "up_test_abcd…wxyz")])
    [record] = caplog.records
    assert record.getMessage() == "dead-lettered 3 message(s) or event(s): expired_key, key up_test_abcd…wxyz"
