"""Settings → Webhooks: the organization's webhook sources (every member reads the list; owners
create and delete them) and its signing secrets (owners only: add, remove).

The same services as ``userpath webhooks``: owners only for any change, audit-logged. A new
source's URL carries its key, so it is handed to the page that shows it once as a new key is
(``context.hand_off_key``), and is never shown again. A signing secret arrives in a POST's body
only and is never shown again, not even in a form shown back after a mistake.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, flash, redirect, request, url_for

from userpath_worker.errors import UserError
from userpath_worker.keys.services import OWNERS_WORK as KEYS_OWNERS_WORK
from userpath_worker.keys.tokens import Environment
from userpath_worker.organizations import services as organizations
from userpath_worker.web.context import (
    Membership,
    actor,
    db,
    form_status,
    hand_off_key,
    membership,
    owner,
    page,
    shown_once,
    signed_in,
    take_handed_off_key,
    web,
)
from userpath_worker.web.keys import ENVIRONMENTS
from userpath_worker.webhooks import services as webhook_secrets
from userpath_worker.webhooks import signatures, sources
from userpath_worker.webhooks.crypto import SecretBox, secret_key

blueprint = Blueprint("webhooks", __name__)


@blueprint.get("/orgs/<int:org_id>/settings/webhooks")
@signed_in
def webhooks_page(org_id: int) -> Any:
    return _webhooks_page(membership(org_id))


@blueprint.post("/orgs/<int:org_id>/settings/webhooks")
@signed_in
def add(org_id: int) -> Any:
    current = owner(org_id, webhook_secrets.OWNERS_WORK)
    provider, secret = request.form.get("provider", ""), request.form.get("secret", "")
    try:
        box = SecretBox(secret_key(web().settings))
        added = webhook_secrets.add_secret(db(), box, current.organization, provider, secret, actor())
    except UserError as error:
        return _webhooks_page(current, str(error), form_status(error), provider=provider)
    db().commit()
    flash(f"Added {added.provider} secret {added.display}: {added.provider} webhooks must now verify.")
    return redirect(url_for("webhooks.webhooks_page", org_id=org_id), 303)


@blueprint.route("/orgs/<int:org_id>/settings/webhooks/<int:secret_id>/remove", methods=["GET", "POST"])
@signed_in
def remove(org_id: int, secret_id: int) -> Any:
    current = owner(org_id, webhook_secrets.OWNERS_WORK)
    secret = webhook_secrets.get_secret(db(), secret_id, current.organization)
    if request.method == "GET":
        return page("remove_webhook_secret.html", secret=secret)
    removed = webhook_secrets.remove_secret(db(), secret.id, actor(), current.organization)
    db().commit()
    flash(f"Removed {removed.provider} secret {removed.display}.")
    return redirect(url_for("webhooks.webhooks_page", org_id=org_id), 303)


@blueprint.post("/orgs/<int:org_id>/settings/webhooks/sources")
@signed_in
def create_source(org_id: int) -> Any:
    current = owner(org_id, KEYS_OWNERS_WORK)  # before reading the form: anyone else gets 403, whatever they sent
    provider, environment = request.form.get("provider", ""), request.form.get("environment", "")
    if environment not in dict(ENVIRONMENTS):
        return _webhooks_page(current, "choose an environment (live or test) from the list", 400, source=provider)
    keys, edge_base_url = web().keys(db()), web().settings.edge_base_url
    try:
        key, url = sources.create_source(
            keys, current.organization, provider, actor(), edge_base_url, Environment(environment)
        )
    except UserError as error:
        return _webhooks_page(current, str(error), form_status(error), source=provider)
    hand_off_key(key.id, url)  # the URL carries the key: shown once, as a new key is
    return redirect(url_for("webhooks.source_shown", org_id=org_id, key_id=key.id), 303)


@blueprint.get("/orgs/<int:org_id>/settings/webhooks/sources/<int:key_id>/new")
@signed_in
def source_shown(org_id: int, key_id: int) -> Any:
    """The new source's URL, once; afterwards (a refresh, the back button) the Webhooks page."""
    current = membership(org_id)
    source = sources.get_source(web().keys(db()), current.organization, key_id)
    url = take_handed_off_key(source.key_id)
    if url is None:
        return redirect(url_for("webhooks.webhooks_page", org_id=org_id), 303)
    return shown_once(page("source_shown.html", source=source, url=url))


@blueprint.route("/orgs/<int:org_id>/settings/webhooks/sources/<int:key_id>/delete", methods=["GET", "POST"])
@signed_in
def delete_source(org_id: int, key_id: int) -> Any:
    """Delete a source's key through the key service (audited as any key's deletion): its URL stops working."""
    current = membership(org_id)
    keys = web().keys(db())
    source = sources.get_source(keys, current.organization, key_id)  # 404 before 403: ids elsewhere stay unknown
    organizations.require_owner(db(), current.organization, actor(), KEYS_OWNERS_WORK)
    if request.method == "GET":
        return page("delete_source.html", source=source)
    keys.delete(source.key_id, actor())
    db().commit()
    flash(f"Deleted the webhook source '{source.name}' ({source.display}); its URL no longer works.")
    return redirect(url_for("webhooks.webhooks_page", org_id=org_id), 303)


def _webhooks_page(
    current: Membership, error: str | None = None, status: int = 200, provider: str = "", source: str = ""
) -> Any:
    """The page: the sources for every member; the forms and the signing secrets for owners only."""
    providers = [(name, name) for name in signatures.providers()]
    return page(
        "webhooks.html",
        status,
        sources=sources.list_sources(web().keys(db()), current.organization),
        secrets=webhook_secrets.list_secrets(db(), current.organization) if current.is_owner else [],
        providers=providers,
        environments=ENVIRONMENTS,
        provider=provider or "stripe",
        source_provider=source or "stripe",
        error=error,
    )
