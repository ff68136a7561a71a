"""The worker's WARNING line about dead letters: one per reason and key, at most once a minute each.

A producer's first mistake (usually its key) shows in the log with the reason, without a line
per message: the first dead letter of a (reason, key) pair is logged at once, the next ones are
counted and logged, with the count since the last line, once the interval has passed and another
dead letter arrives for any pair. The key is its display form, never the key; a message whose
key has no display form (missing, malformed, or no message at all) is under ``malformed``.

One reporter per process (``REPORTER``): with a prefork pool, each pool process keeps its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping

INTERVAL_SECONDS = 60.0
NO_KEY = "malformed"
MAX_PAIRS = 10_000

logger = logging.getLogger("userpath.worker")


class DeadLetterReporter:
    def __init__(
        self,
        interval: float = INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        log: logging.Logger = logger,
    ) -> None:
        self.interval = interval
        self.clock = clock
        self.log = log
        self._pending: dict[tuple[str, str], int] = {}  # dead letters not yet in a line
        self._last: dict[tuple[str, str], float] = {}  # when each pair's last line was written
        self._lock = threading.Lock()

    def report(self, outcomes: Iterable[tuple[Mapping[str, int], str | None]]) -> None:
        """Count dead letters, given as (count by reason, key display form or None) per message,
        and write the lines that are due."""
        with self._lock:
            for reasons, key in outcomes:
                for reason, count in reasons.items():
                    if count:
                        pair = (reason, key or NO_KEY)
                        self._pending[pair] = self._pending.get(pair, 0) + count
            if not self._pending:
                return
            now = self.clock()
            due = [pair for pair in self._pending if pair not in self._last or now - self._last[pair] >= self.interval]
            for pair in due:
                count = self._pending.pop(pair)
                self._last[pair] = now
                reason, key = pair
                self.log.warning(
                    "dead-lettered %s message(s) or event(s): %s, key %s",
                    count,
                    reason,
                    key,
                    extra={"reason": reason, "key": key, "dead_lettered": count},
                )
            if len(self._last) > MAX_PAIRS:  # many keys (a producer's garbage): forget the quiet ones
                self._last = {
                    pair: at for pair, at in self._last.items() if pair in self._pending or now - at < self.interval
                }


REPORTER = DeadLetterReporter()
