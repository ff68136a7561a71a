"""Webhook normalizers: turn one provider's delivery into an event name and a user id.

A small registry that users extend with ``register``::

    @register("shopify")
    def shopify(headers, body):
        return Normalized(type=headers.get("x-shopify-topic", "received"), user_id=None)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Normalized:
    type: str
    user_id: str | None = None


# headers (names lower-cased) and the body (parsed JSON, or the raw text) -> Normalized
Normalizer = Callable[[Mapping[str, str], Any], Normalized]

_registry: dict[str, Normalizer] = {}


def register(provider: str) -> Callable[[Normalizer], Normalizer]:
    def decorator(normalizer: Normalizer) -> Normalizer:
        _registry[provider] = normalizer
        return normalizer

    return decorator


def normalize(provider: str, headers: Mapping[str, str], body: Any) -> Normalized:
    lowered = {name.lower(): value for name, value in headers.items()}
    return _registry.get(provider, generic)(lowered, body)


def _field(body: Any, name: str) -> str | None:
    value = body.get(name) if isinstance(body, dict) else None
    return value if isinstance(value, str) and value else None


def generic(headers: Mapping[str, str], body: Any) -> Normalized:
    """Any provider without its own normalizer: the body's ``type`` or ``event``."""
    return Normalized(type=_field(body, "type") or _field(body, "event") or "received")


@register("stripe")
def stripe(headers: Mapping[str, str], body: Any) -> Normalized:
    # Stripe events carry the customer on the object for most types (invoice, subscription...).
    data = body.get("data") if isinstance(body, dict) else None
    obj = data.get("object") if isinstance(data, dict) else None
    customer = obj.get("customer") if isinstance(obj, dict) else None
    if isinstance(obj, dict) and obj.get("object") == "customer":
        customer = obj.get("id")
    return Normalized(
        type=_field(body, "type") or "received",
        user_id=customer if isinstance(customer, str) else None,
    )


@register("github")
def github(headers: Mapping[str, str], body: Any) -> Normalized:
    event_type = headers.get("x-github-event") or "received"
    action = _field(body, "action")
    sender = body.get("sender") if isinstance(body, dict) else None
    login = sender.get("login") if isinstance(sender, dict) else None
    return Normalized(
        type=f"{event_type}.{action}" if action else event_type,
        user_id=f"github:{login}" if isinstance(login, str) else None,
    )
