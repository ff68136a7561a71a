"""Key scopes: what a key may send, as Stripe's restricted keys and GitHub's fine-grained tokens.

A key may be limited to ``track`` (server events), ``jobs`` (background jobs), ``webhooks`` (every
provider's) or one provider's webhooks (``webhooks:stripe``), in any combination; a key without
scopes (``None``) may send everything, as every key made before scopes existed does. Scopes are
chosen when a key is made and never change: rolling a key keeps them.

The one place that reads a scope a person typed (``parse_scopes``) and the one rule the worker and
the edge enforce (``permits``): a frozenset lookup on the cached identity, nothing on the hot path.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from userpath_client.contract import PROVIDER_PATTERN
from userpath_worker.errors import UserError

if TYPE_CHECKING:  # only for the annotation: events depends on keys, never the other way round
    from userpath_worker.events.models import Source

TRACK = "track"
JOBS = "jobs"
WEBHOOKS = "webhooks"
PROVIDER_SEPARATOR = ":"
ALL_SCOPES = (TRACK, JOBS, WEBHOOKS)  # what a key without scopes may do, in the order lists show it
SCOPES_HINT = "track, jobs, webhooks or webhooks:PROVIDER (e.g. webhooks:stripe)"

# The scope each source needs, by the source's value (``Source`` is a StrEnum, so either works).
_SCOPE_OF_SOURCE = {"server": TRACK, "job": JOBS, "webhook": WEBHOOKS}
_PROVIDER = re.compile(PROVIDER_PATTERN)

Scopes = frozenset[str] | None  # None: every scope


def permits(scopes: Scopes, source: Source, provider: str | None = None) -> bool:
    """Whether a key with ``scopes`` may send an event of ``source`` (for a webhook, of
    ``provider``: a provider that is not text is permitted only by ``webhooks`` itself)."""
    if scopes is None:
        return True
    needed = _SCOPE_OF_SOURCE[source]
    if needed in scopes:
        return True
    return needed == WEBHOOKS and isinstance(provider, str) and f"{WEBHOOKS}{PROVIDER_SEPARATOR}{provider}" in scopes


def provider_scope(provider: str) -> str:
    """The scope of one provider's webhooks, e.g. ``webhooks:stripe`` (unchecked: ``parse_scope``)."""
    return f"{WEBHOOKS}{PROVIDER_SEPARATOR}{provider}"


def only_provider(scopes: Scopes) -> str | None:
    """The provider a key is limited to when its one scope is that provider's webhooks (a webhook
    source's key, ``webhooks.sources``); None for any other key."""
    if scopes is None or len(scopes) != 1:
        return None
    base, separator, provider = next(iter(scopes)).partition(PROVIDER_SEPARATOR)
    return provider if base == WEBHOOKS and separator else None


def parse_scope(text: str) -> str:
    """One scope as a person typed it, checked; a ``UserError`` saying what is allowed otherwise."""
    scope = text.strip()
    if scope in ALL_SCOPES:
        return scope
    base, separator, provider = scope.partition(PROVIDER_SEPARATOR)
    if base == WEBHOOKS and separator and _PROVIDER.fullmatch(provider):
        return scope
    if base == WEBHOOKS and separator:
        raise UserError(
            f"'{scope}' names no provider: after 'webhooks:' come 1 to 50 lowercase letters, digits, "
            "'-' and '_' (e.g. webhooks:stripe)"
        )
    raise UserError(f"unknown scope '{scope}': a scope is {SCOPES_HINT}")


def parse_scopes(texts: Iterable[str]) -> Scopes:
    """The scopes chosen (CLI ``--scope``, the web form), checked and made canonical: all three
    is ``None`` (every scope). Choosing none is a mistake (a key that could send nothing; callers
    pass ``None`` for a key without scopes), and so is ``webhooks`` beside one provider's."""
    chosen = frozenset(parse_scope(text) for text in texts)
    if not chosen:
        raise UserError(f"choose at least one scope: {SCOPES_HINT}")
    providers = sorted(scope for scope in chosen if scope.startswith(WEBHOOKS + PROVIDER_SEPARATOR))
    if WEBHOOKS in chosen and providers:
        raise UserError(
            f"webhooks already covers every provider's webhooks: drop {', '.join(providers)}, "
            f"or drop webhooks to allow only {', '.join(providers)}"
        )
    return None if chosen.issuperset(ALL_SCOPES) else chosen


def from_stored(stored: list[str] | None) -> Scopes:
    """The scopes of the ``api_keys.scopes`` column (JSON, NULL for every scope)."""
    return None if stored is None else frozenset(stored)


def to_stored(scopes: Scopes) -> list[str] | None:
    """What the ``api_keys.scopes`` column keeps: the scopes in the order ``listed`` gives them."""
    return None if scopes is None else listed(scopes)


def listed(scopes: Scopes | list[str]) -> list[str]:
    """Scopes as a list shows them: the three of a key without scopes, else track, jobs,
    webhooks first and then one provider's webhooks, by provider."""
    if scopes is None:
        return list(ALL_SCOPES)
    return sorted(scopes, key=lambda scope: (ALL_SCOPES.index(scope) if scope in ALL_SCOPES else 3, scope))


def described(scopes: Scopes | list[str]) -> str:
    """Scopes in a table cell or a sentence: ``all`` or ``track, webhooks:stripe``."""
    return "all" if scopes is None else ", ".join(listed(scopes))
