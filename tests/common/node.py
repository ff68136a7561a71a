"""The Node producer of docs/contract.md, run as written with ``node`` in a directory where
``redis@4`` is installed by npm (no global state assumed)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from userpath_client.contract import BROKER_URL_VARIABLE, KEY_VARIABLE

CONTRACT = Path(__file__).resolve().parents[2] / "docs" / "contract.md"
NODE_EXAMPLE = re.compile(r"<!-- example: node-redis -->\n```js\n(.*?)\n```", re.DOTALL)


def contract_node_producer(directory: Path) -> Path:
    """The contract's Node block, as written, saved as ``send.mjs`` in ``directory`` beside redis@4."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("node and npm are needed to run the contract's Node producer")
    (source,) = NODE_EXAMPLE.findall(CONTRACT.read_text())
    installed = subprocess.run(
        ["npm", "install", "--prefix", str(directory), "--no-audit", "--no-fund", "redis@4"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert installed.returncode == 0, installed.stderr[-2000:]
    script = directory / "send.mjs"
    script.write_text(source + "\n")
    return script


def run_node(script: Path, key: str, redis_url: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, KEY_VARIABLE: key, BROKER_URL_VARIABLE: redis_url}
    return subprocess.run(
        ["node", script.name], cwd=script.parent, env=environment, capture_output=True, text=True, timeout=60
    )
