"""The worker's side of wire contract v1: what it measures and shows of a message.

The models and the JSON encoding themselves are the contract's (``userpath_client.schemas``),
shared with the producer client.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from userpath_client.contract import MAX_NESTING
from userpath_client.schemas import nested_deeper_than
from userpath_worker.keys.tokens import redact

# What a message's size is judged by when parts of it are not JSON (a repr stands in for them).
_LENIENT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=repr)


def encoded_size(value: Any) -> int:
    """The size of ``value`` as compact UTF-8 JSON, even when parts of it are not storable, so
    a message's size is judged before its events are (each then gets its own verdict). Raises
    ``TooDeep`` for more than ``MAX_NESTING`` levels, which no encoder here should recurse into."""
    try:
        return len(orjson.dumps(value))
    except orjson.JSONEncodeError:
        if nested_deeper_than(value, MAX_NESTING):
            raise TooDeep from None
        return len(_LENIENT.encode(value).encode("utf-8", "surrogatepass"))


class TooDeep(ValueError):
    """A message nested more than the contract's ``MAX_NESTING`` levels."""


TOO_DEEP = f"the message is nested more than {MAX_NESTING} levels deep; flatten its properties"


def summarize_arguments(args: Any) -> str:
    """A task's argument list as Celery may show it (logs, task events, Flower): the key in its
    display form and the batch as a count, so neither secrets nor customer data leak there."""
    if not isinstance(args, list | tuple):
        return "(?)"
    shown = []
    for argument in args:
        if not isinstance(argument, dict):
            shown.append(f"<{type(argument).__name__}>")
            continue
        fields = {name: f"<{type(value).__name__}>" for name, value in argument.items()}
        if "api_key" in argument:
            fields["api_key"] = repr(redact(argument["api_key"]))
        if isinstance(argument.get("batch"), list):
            fields["batch"] = f"<{len(argument['batch'])} events>"
        shown.append("{" + ", ".join(f"{name!r}: {value}" for name, value in fields.items()) + "}")
    return "(" + ", ".join(shown) + ("," if len(shown) == 1 else "") + ")"
