"""Node programs run with ``node`` in a temporary directory where npm installed what they import
(no global state assumed): the Node producer of docs/contract.md, run as written beside
``redis@4``, and ``tests/e2e/node/segment_send.mjs`` beside Segment's ``@segment/analytics-node``."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from userpath_client.contract import BROKER_URL_VARIABLE, KEY_VARIABLE

REPOSITORY = Path(__file__).resolve().parents[2]
CONTRACT = REPOSITORY / "docs" / "contract.md"
NODE_EXAMPLE = re.compile(r"<!-- example: node-redis -->\n```js\n(.*?)\n```", re.DOTALL)
SEGMENT_NODE = "@segment/analytics-node@3.1.0"  # pinned: its 429 handling is what the edge test relies on
SEGMENT_SENDER = REPOSITORY / "tests" / "e2e" / "node" / "segment_send.mjs"


def npm_install(directory: Path, *packages: str) -> None:
    """``packages`` installed by npm into ``directory``'s node_modules, where a script saved in
    ``directory`` imports them."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail(f"node and npm are needed to run Node programs with {', '.join(packages)}")
    installed = subprocess.run(
        ["npm", "install", "--prefix", str(directory), "--no-audit", "--no-fund", *packages],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert installed.returncode == 0, installed.stderr[-2000:]


def contract_node_producer(directory: Path) -> Path:
    """The contract's Node block, as written, saved as ``send.mjs`` in ``directory`` beside redis@4."""
    (source,) = NODE_EXAMPLE.findall(CONTRACT.read_text())
    npm_install(directory, "redis@4")
    script = directory / "send.mjs"
    script.write_text(source + "\n")
    return script


def run_node(script: Path, key: str, redis_url: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, KEY_VARIABLE: key, BROKER_URL_VARIABLE: redis_url}
    return subprocess.run(
        ["node", script.name], cwd=script.parent, env=environment, capture_output=True, text=True, timeout=60
    )


def segment_node_sender(directory: Path) -> Path:
    """``segment_send.mjs`` copied into ``directory`` beside the pinned ``@segment/analytics-node``."""
    npm_install(directory, SEGMENT_NODE)
    return Path(shutil.copy(SEGMENT_SENDER, directory))


def send_with_segment_node(script: Path, config: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
    """What ``segment_send.mjs`` reports after sending ``config`` (its format is in the script)."""
    sent = subprocess.run(
        ["node", script.name],
        cwd=script.parent,
        input=json.dumps(config),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert sent.returncode == 0, sent.stderr[-3000:]
    return json.loads(sent.stdout)
