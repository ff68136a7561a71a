"""Settings → Audit log (owners): who did what, newest first, a page at a time."""

from __future__ import annotations

from typing import Any

from flask import Blueprint
from sqlalchemy import select

from userpath_worker.audit import services as audit_log
from userpath_worker.keys.models import ApiKey
from userpath_worker.web.context import db, owner, page, page_number, signed_in

blueprint = Blueprint("audit", __name__)

PAGE_SIZE = 50


@blueprint.get("/orgs/<int:org_id>/settings/audit")
@signed_in
def audit(org_id: int) -> Any:
    current = owner(org_id, "read the audit log")
    found = audit_log.page(db(), current.organization.id, page_number(), PAGE_SIZE)
    key_ids = {entry.api_key_id for entry in found.entries if entry.api_key_id is not None}
    names = {
        key_id: f"{name} ({display})"
        for key_id, name, display in db().execute(
            select(ApiKey.id, ApiKey.name, ApiKey.display).where(
                ApiKey.org_id == current.organization.id, ApiKey.id.in_(key_ids)
            )
        )
    }
    return page("audit.html", page=found, keys=names)
