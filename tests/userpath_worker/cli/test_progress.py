"""Progress when standard error is not a terminal: plain lines, not one a batch."""

from __future__ import annotations

import pytest

from tests.common.clock import FakeClock
from userpath_worker.cli import progress as progress_module
from userpath_worker.cli.progress import progress


def test_piped_progress_is_at_most_a_line_a_second_and_always_the_last_count(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clock = FakeClock()
    monkeypatch.setattr(progress_module, "monotonic", clock)
    with progress("erased", "event", 5000) as show:
        for done, seconds in ((1000, 0.0), (2000, 0.4), (3000, 0.7), (4000, 0.4)):
            clock.now += seconds
            show(done)
    with progress("searched", "dead letter", 10) as show:
        show(7)  # fewer than counted at the start (some went meanwhile): still shown, as the last
    with progress("erased", "event", 1) as show:
        show(1)
    with progress("replayed", "dead letter", 0):
        pass  # nothing to do: no line
    assert capsys.readouterr().err.splitlines() == [
        "erased 1000 of 5000 events",
        "erased 3000 of 5000 events",  # 1.1 s after the first; 2000 came too soon
        "erased 4000 of 5000 events",  # too soon too, but the last
        "searched 7 of 10 dead letters",
        "erased 1 of 1 event",  # one, not "1 events"
    ]
