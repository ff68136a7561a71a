"""How long to wait before trying again after a database outage: task retries and the batched
ingestion step back off alike."""

from __future__ import annotations

import random

RETRY_BASE_SECONDS = 1.0
RETRY_MAX_SECONDS = 60.0  # the boundary refuses an ETA more than twice this ahead


def backoff_seconds(attempts: int) -> float:
    """Exponential backoff with full jitter, capped: 1 s, 2 s, 4 s ... 60 s after 0, 1, 2 ... failed attempts."""
    # The exponent is capped first: 2.0 ** 1024 overflows a float.
    ceiling = min(RETRY_MAX_SECONDS, RETRY_BASE_SECONDS * 2 ** min(attempts, 16))
    return random.uniform(ceiling / 2, ceiling)
