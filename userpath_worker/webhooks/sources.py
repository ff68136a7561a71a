"""Webhook sources: the URL an owner pastes into a provider (Stripe, GitHub...), on the HTTP edge.

The URL carries a key limited to that provider's webhooks (``webhooks:<provider>``): the one URL
of the product with a key in it, so a leaked one can send that provider's deliveries and nothing
else. It is shown once, as a key is; the key appears in the keys list like any other. A source is
such a key: any current key whose only scope is one provider's webhooks is listed as one, and
deleting the key retires its URL. The CLI (``userpath webhooks sources``) and Settings → Webhooks
both come here, so they name and make sources alike.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import select

from userpath_worker.errors import NotFound
from userpath_worker.keys import scopes
from userpath_worker.keys.models import ApiKey, KeyStatus
from userpath_worker.keys.services import KeyService
from userpath_worker.keys.tokens import Environment
from userpath_worker.organizations.models import Organization

WEBHOOKS_PATH = "/v1/webhooks"


@dataclass(frozen=True, slots=True)
class WebhookSource:
    """A source as lists show it: never its key or URL, which exist only when it is made."""

    key_id: int
    name: str
    provider: str
    environment: Environment
    display: str  # the key's display form
    created_at: dt.datetime
    last_used_at: dt.datetime | None
    status: KeyStatus  # a rolled source's URL works until its grace ends, an expired one's no more


def source_url(edge_base_url: str, provider: str, key: str) -> str:
    return f"{edge_base_url}{WEBHOOKS_PATH}/{provider}/{key}"


def create_source(
    keys: KeyService,
    organization: Organization,
    provider: str,
    actor: str,
    edge_base_url: str,
    environment: Environment = Environment.LIVE,
) -> tuple[ApiKey, str]:
    """A new key for ``provider``'s webhooks and the URL that carries it, which exists only here."""
    scope = scopes.parse_scope(scopes.provider_scope(provider))  # a UserError if the name is unusable
    name = _free_name(keys, organization, f"{provider} webhooks ({environment.value})")
    key, plaintext = keys.create(organization, name, actor, environment, scopes=frozenset({scope}))
    return key, source_url(edge_base_url, provider, plaintext)


def list_sources(keys: KeyService, organization: Organization) -> list[WebhookSource]:
    """The organization's current keys that are webhook sources, oldest first."""
    return [source for key in keys.list(organization) if (source := _as_source(key)) is not None]


def get_source(keys: KeyService, organization: Organization, key_id: int) -> WebhookSource:
    """One of ``organization``'s current sources; NotFound for any other key, as for an unknown id."""
    key = keys.get_in(organization, key_id)
    source = _as_source(key) if key.deleted_at is None else None
    if source is None:
        raise NotFound(f"webhook source {key_id} not found in '{organization.name}'")
    return source


def _as_source(key: ApiKey) -> WebhookSource | None:
    provider = scopes.only_provider(scopes.from_stored(key.scopes))
    if provider is None:
        return None
    return WebhookSource(
        key.id, key.name, provider, key.environment, key.display, key.created_at, key.last_used_at, key.status()
    )


def _free_name(keys: KeyService, organization: Organization, base: str) -> str:
    """``base``, or ``base 2``, ``base 3``...: the first no current key of the organization has,
    since a key's name is unique among them."""
    taken = set(
        keys.session.scalars(
            select(ApiKey.name).where(
                ApiKey.org_id == organization.id,
                ApiKey.deleted_at.is_(None),
                ApiKey.rolled_at.is_(None),
                ApiKey.name.startswith(base, autoescape=True),
            )
        )
    )
    number = 1
    name = base
    while name in taken:
        number += 1
        name = f"{base} {number}"
    return name
