"""The key checksum's test vectors in docs/contract.md are what ``userpath_client.contract``
computes, and the rules written there (which characters, CRC-32, alphabet, order, padding) give
the same checksum when followed literally, so the document cannot drift from the code."""

from __future__ import annotations

import json
import re
import zlib
from pathlib import Path
from typing import Any

import pytest

from userpath_client.contract import KEY_ALPHABET, key_checksum, key_problem

CONTRACT = Path(__file__).resolve().parents[2] / "docs" / "contract.md"
VECTORS = re.compile(r"<!-- example: key-checksum-vectors -->\n```json\n(.*?)\n```", re.DOTALL)
DOCUMENTED_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def documented_vectors() -> list[dict[str, Any]]:
    (block,) = VECTORS.findall(CONTRACT.read_text())
    return json.loads(block)


def as_the_document_says(random: str) -> str:
    """The checksum computed from the contract's words alone: CRC-32 (zlib) of the ASCII random
    characters, base 62 in the documented alphabet, most significant first, '0'-padded to 6."""
    number, digits = zlib.crc32(random.encode("ascii")), ""
    while number:
        digits = DOCUMENTED_ALPHABET[number % 62] + digits
        number //= 62
    return digits.rjust(6, "0")


def test_the_documented_alphabet_is_the_contracts() -> None:
    assert DOCUMENTED_ALPHABET == KEY_ALPHABET
    assert f"`{DOCUMENTED_ALPHABET}`" in CONTRACT.read_text()


def test_there_is_a_vector_that_needs_padding() -> None:
    assert any(vector["checksum"].startswith("0") for vector in documented_vectors())


@pytest.mark.parametrize("vector", documented_vectors(), ids=lambda vector: vector["checksum"])
def test_a_documented_vector_is_what_the_contract_module_computes(vector: dict[str, Any]) -> None:
    key, random, checksum = vector["key"], vector["random"], vector["checksum"]
    assert key[8:40] == random and key[40:] == checksum and len(key) == 46
    assert zlib.crc32(random.encode("ascii")) == vector["crc32"]
    assert key_checksum(random) == as_the_document_says(random) == checksum
    assert key_problem(key) is None


@pytest.mark.parametrize("vector", documented_vectors(), ids=lambda vector: vector["checksum"])
def test_a_documented_key_mistyped_is_refused(vector: dict[str, Any]) -> None:
    key = vector["key"]
    last = key[-1]
    assert key_problem(key[:-1] + ("0" if last != "0" else "1")) == "bad_checksum"
    assert key_problem(key[:8] + key[8:].swapcase()) == "bad_checksum"
    assert key_problem(key[:-1]) == "malformed"
    assert key_problem(key.replace("up_test_", "up_prod_")) == "malformed"


def test_the_documents_mistyped_examples_are_bad_checksums() -> None:
    text = CONTRACT.read_text()
    key = documented_vectors()[0]["key"]
    endings = re.findall(r"`\.\.\.(\w{6})`", text)
    assert endings
    for ending in endings:
        assert key_problem(key[:40] + ending) == "bad_checksum"
