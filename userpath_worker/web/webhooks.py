"""Settings → Webhooks (owners): the organization's webhook signing secrets; add, remove.

The same services as ``userpath webhooks secrets``: owners only, audit-logged, stored encrypted.
A secret arrives in a POST's body only and is never shown again, not even in a form shown back
after a mistake.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, flash, redirect, request, url_for

from userpath_worker.errors import UserError
from userpath_worker.web.context import Membership, actor, db, form_status, owner, page, signed_in, web
from userpath_worker.webhooks import services as webhook_secrets
from userpath_worker.webhooks import signatures
from userpath_worker.webhooks.crypto import SecretBox, secret_key

blueprint = Blueprint("webhooks", __name__)


@blueprint.get("/orgs/<int:org_id>/settings/webhooks")
@signed_in
def list_secrets(org_id: int) -> Any:
    return _secrets_page(owner(org_id, webhook_secrets.OWNERS_WORK))


@blueprint.post("/orgs/<int:org_id>/settings/webhooks")
@signed_in
def add(org_id: int) -> Any:
    current = owner(org_id, webhook_secrets.OWNERS_WORK)
    provider, secret = request.form.get("provider", ""), request.form.get("secret", "")
    try:
        box = SecretBox(secret_key(web().settings))
        added = webhook_secrets.add_secret(db(), box, current.organization, provider, secret, actor())
    except UserError as error:
        return _secrets_page(current, str(error), form_status(error), provider=provider)
    db().commit()
    flash(f"Added {added.provider} secret {added.display}: {added.provider} webhooks must now verify.")
    return redirect(url_for("webhooks.list_secrets", org_id=org_id), 303)


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
    return redirect(url_for("webhooks.list_secrets", org_id=org_id), 303)


def _secrets_page(current: Membership, error: str | None = None, status: int = 200, provider: str = "") -> Any:
    return page(
        "webhooks.html",
        status,
        secrets=webhook_secrets.list_secrets(db(), current.organization),
        providers=[(name, name) for name in signatures.providers()],
        provider=provider or "stripe",
        error=error,
    )
