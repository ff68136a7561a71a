"""Webhook sources: the URL an owner pastes into a provider (Stripe, GitHub...), on the HTTP edge.

The URL carries a key limited to that provider's webhooks (``webhooks:<provider>``): the one URL
of the product with a key in it, so a leaked one can send that provider's deliveries and nothing
else. It is shown once, as a key is; the key appears in the keys list like any other.
"""

from __future__ import annotations

from userpath_worker.keys import scopes
from userpath_worker.keys.models import ApiKey
from userpath_worker.keys.services import KeyService
from userpath_worker.keys.tokens import Environment
from userpath_worker.organizations.models import Organization

WEBHOOKS_PATH = "/v1/webhooks"


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
    scope = scopes.parse_scope(f"{scopes.WEBHOOKS}{scopes.PROVIDER_SEPARATOR}{provider}")  # a UserError if unusable
    key, plaintext = keys.create(organization, f"{provider} webhooks", actor, environment, scopes=frozenset({scope}))
    return key, source_url(edge_base_url, provider, plaintext)
