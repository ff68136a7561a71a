"""Running the real ``userpath`` program on a terminal (a pseudo-terminal), to answer its questions
and see what it shows only to a person: confirmations and progress bars."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

USERPATH = str(Path(sys.executable).with_name("userpath"))
QUESTION = b"[y/N]"  # how click.confirm ends its question


def in_a_terminal(*arguments: str, answer: str | None = None, timeout: float = 60.0) -> tuple[int, str]:
    """Run ``userpath arguments`` with a terminal as standard input, output and error (and this
    process's environment), typing ``answer`` when it asks; returns its exit code and all it
    wrote there."""
    ours, theirs = pty.openpty()
    process = subprocess.Popen([USERPATH, *arguments], stdin=theirs, stdout=theirs, stderr=theirs)
    os.close(theirs)
    output = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not select.select([ours], [], [], 0.1)[0]:
                if process.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(ours, 4096)
            except OSError:  # EIO: the program ended and its terminal closed
                break
            if not chunk:
                break
            output += chunk
            if answer is not None and QUESTION in output:
                os.write(ours, answer.encode() + b"\n")
                answer = None
        return process.wait(timeout=max(deadline - time.monotonic(), 1.0)), output.decode(errors="replace")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(ours)
