"""Properties of the key format: generated keys parse, anything else is refused without I/O."""

from __future__ import annotations

import base64

from hypothesis import given
from hypothesis import strategies as st

from userpath_client.contract import KEY_ALPHABET as ALPHABET
from userpath_client.contract import key_checksum
from userpath_worker.keys import tokens
from userpath_worker.keys.tokens import AuthFailure, Environment, ParsedKey

environments = st.sampled_from(list(Environment))


@given(environments)
def test_a_generated_key_always_parses(environment: Environment) -> None:
    key = tokens.generate(environment)
    assert tokens.KEY_PATTERN.fullmatch(key)
    assert tokens.parse(key) == ParsedKey(environment=environment, secret=key)


@given(st.one_of(st.text(), st.binary(), st.integers(), st.none(), st.lists(st.text())))
def test_a_random_value_never_parses(candidate: object) -> None:
    assert tokens.parse(candidate) in (AuthFailure.MALFORMED, AuthFailure.BAD_CHECKSUM)


@given(st.text(alphabet=ALPHABET, min_size=38, max_size=38), environments)
def test_a_random_well_shaped_key_fails_its_checksum(body: str, environment: Environment) -> None:
    candidate = f"up_{environment}_{body}"
    if body[32:] != key_checksum(body[:32]):  # a 1 in 62**6 chance of a genuine checksum
        assert tokens.parse(candidate) is AuthFailure.BAD_CHECKSUM


@given(environments, st.data())
def test_any_one_character_changed_fails_the_checksum(environment: Environment, data: st.DataObject) -> None:
    key = tokens.generate(environment)
    start = len("up_live_")
    position = data.draw(st.integers(min_value=start, max_value=len(key) - 1))
    replacement = data.draw(st.sampled_from([c for c in ALPHABET if c != key[position]]))
    changed = key[:position] + replacement + key[position + 1 :]
    assert tokens.parse(changed) is AuthFailure.BAD_CHECKSUM


def test_the_checksum_is_crc32_in_base62_padded_to_six() -> None:
    import zlib

    body = "0" * 32
    number = zlib.crc32(body.encode())
    digits = ""
    while number:
        number, remainder = divmod(number, 62)
        digits = ALPHABET[remainder] + digits
    assert key_checksum(body) == digits.rjust(6, "0")


def test_a_key_of_another_environment_prefix_is_malformed() -> None:
    key = tokens.generate(Environment.LIVE)
    assert tokens.parse(key.replace("up_live_", "up_prod_")) is AuthFailure.MALFORMED
    assert tokens.parse(key + "x") is AuthFailure.MALFORMED
    assert tokens.parse(" " + key) is AuthFailure.MALFORMED


def test_the_display_form_hides_the_secret() -> None:
    key = tokens.generate(Environment.TEST)
    shown = tokens.display_form(key)
    assert shown == f"{key[:12]}...{key[-4:]}"
    assert not tokens.KEY_PATTERN.search(shown)


def test_a_pepper_changes_the_digest() -> None:
    key = tokens.generate(Environment.LIVE)
    assert tokens.digest(key) != tokens.digest(key, pepper="pepper")
    assert len(tokens.digest(key, pepper="pepper")) == 64


def test_a_key_hidden_in_base64_is_found_however_it_is_wrapped_or_nested() -> None:
    key = tokens.generate(Environment.LIVE)
    text = f'[[{{"api_key": "{key}", "batch": []}}], {{}}, {{}}]'.encode()
    for hidden in (
        base64.b64encode(text),
        base64.encodebytes(text),  # line-wrapped
        b"prefix " + base64.b64encode(text)[3:],  # cut mid-way through a quantum
        base64.urlsafe_b64encode(text),
        base64.b64encode(base64.b64encode(text)),
    ):
        assert tokens.hides_key(hidden), hidden[:40]
    assert not tokens.hides_key(text)  # plain: scrub_text finds it
    assert not tokens.hides_key(base64.b64encode(b"no key in here " * 10))
