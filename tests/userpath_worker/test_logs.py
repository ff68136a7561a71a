"""The last line of defence: whatever a log call passes, no key reaches the log in any encoding."""

from __future__ import annotations

import base64
import io
import json
import logging
import time
from collections.abc import Iterator

import pytest

from userpath_worker import logs
from userpath_worker.keys import tokens
from userpath_worker.keys.tokens import Environment

KEY = tokens.generate(Environment.LIVE)


@pytest.fixture
def written() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()  # not a terminal: JSON lines
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    logs.configure("DEBUG", stream)
    try:
        yield logging.getLogger("celery.concurrency"), stream
    finally:
        root.handlers[:], root.level = handlers, level


def lines(stream: io.StringIO) -> list[dict[str, str]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_plain_key_is_written_in_its_display_form(written: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = written
    logger.debug("TaskPool: Apply (args:(%r,))", {"api_key": KEY})
    [line] = lines(stream)
    assert KEY not in line["message"] and tokens.display_form(KEY) in line["message"]


@pytest.mark.parametrize(
    "encoded",
    [
        base64.b64encode(json.dumps({"api_key": KEY}).encode()).decode(),
        base64.b64encode(base64.b64encode(KEY.encode())).decode(),
        base64.b64encode(KEY.encode()).decode().rstrip("="),
        "".join(f"%{byte:02X}" for byte in KEY.encode()),
    ],
    ids=["base64", "base64 of base64", "bare base64 at the end", "percent-encoded"],
)
def test_a_line_that_hides_a_key_encoded_is_withheld_whole(
    written: tuple[logging.Logger, io.StringIO], encoded: str
) -> None:
    logger, stream = written
    logger.debug("TaskPool: Apply (args:(b'%s',))", encoded)
    [line] = lines(stream)
    assert line["message"] == logs.WITHHELD and line["level"] == "DEBUG" and line["logger"] == "celery.concurrency"
    assert encoded not in stream.getvalue()


def test_a_huge_message_is_cut_and_scanned_in_bounded_time(written: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = written
    started = time.perf_counter()
    logger.debug("body %s", base64.b64encode(b"x" * (40 * 1024 * 1024)).decode())
    assert time.perf_counter() - started < 1
    [line] = lines(stream)
    assert len(line["message"]) <= logs.MAX_MESSAGE_CHARS + 10 and line["message"].endswith("[cut]")
