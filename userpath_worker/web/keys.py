"""Settings → API Keys: the list, "+" (create), roll and delete.

The list is every member's to read; the forms and their POSTs are for owners, which KeyService
decides (``require_owner``), as it does for the CLI. A new key is shown once, after a redirect
(post-redirect-get): the POST hands it off server-side (``keys.handoff``) and the page it redirects
to takes it back, once, marked ``no-store``; the key is in no URL, and a refresh lists the keys.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any, NamedTuple

from flask import Blueprint, flash, redirect, render_template, request, url_for
from kombu.utils.url import maybe_sanitize_url
from markupsafe import Markup
from sqlalchemy import Row, select

from config.settings import Settings
from userpath_worker.db import utcnow
from userpath_worker.errors import UserError
from userpath_worker.events import rollups
from userpath_worker.keys import scopes
from userpath_worker.keys.models import ApiKey, key_status
from userpath_worker.keys.services import OWNERS_WORK, KeyService
from userpath_worker.keys.tokens import Environment
from userpath_worker.organizations import services as organizations
from userpath_worker.rotation.services import RotationPolicy
from userpath_worker.web.context import (
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
from userpath_worker.web.formatting import flag_reason, relative, utc
from userpath_worker.web_links import key_anchor

blueprint = Blueprint("keys", __name__)

ENVIRONMENTS = [(Environment.LIVE.value, "Live"), (Environment.TEST.value, "Test")]
# The form's choices of lifetime and of roll grace: the services take any duration, and check it.
EXPIRIES = {"never": None, "30": dt.timedelta(days=30), "90": dt.timedelta(days=90), "365": dt.timedelta(days=365)}
EXPIRY_LABELS = {"never": "Never", "30": "30 days", "90": "90 days", "365": "365 days"}
GRACES = {"0": dt.timedelta(0), "1h": dt.timedelta(hours=1), "24h": dt.timedelta(hours=24), "7d": dt.timedelta(days=7)}
GRACE_LABELS = {"0": "At once", "1h": "1 hour", "24h": "24 hours", "7d": "7 days"}
DEFAULT_GRACE = "24h"
# The form's scope boxes, all ticked at first (a key that may send everything); one provider's
# webhooks are typed into a field of their own (``providers``), as any provider name may be.
SCOPE_CHOICES = [
    (scopes.TRACK, "server events (userpath.events)"),
    (scopes.JOBS, "background jobs (userpath.jobs)"),
    (scopes.WEBHOOKS, "every provider's webhooks (userpath.webhooks)"),
]
PROVIDER_LIST = re.compile(r"[\s,]+")


class KeyRow(NamedTuple):
    """One row of the list, as text. A tuple, which the template unpacks into local names: a
    thousand rows of attribute lookups cost the page a quarter of its time."""

    id: int
    name: str
    display: str
    environment: str
    scopes: str  # "all", or e.g. "track, webhooks:stripe"
    status: str
    replaced_by: str  # the replacement's display form after a roll ("" when not rolled)
    replaced_by_anchor: str  # its row's id; "" when it is not listed (deleted)
    exposed: str  # when the key was reported leaked, relative; "" when never
    exposed_utc: str
    exposed_url: str  # where it was found, when the report said
    created: str
    last_used: str  # relative, or "never"
    last_used_utc: str
    expires: str  # relative, or "never"
    expires_utc: str
    flag: str  # the rotation flag's reasons, in words; empty when not flagged
    sent: str  # the last 24 hours, e.g. "12 stored · 1 refused"; "" when nothing came
    path: str  # of its roll and delete pages, without the last part
    anchor: str  # the row's id, where a reminder's link points (web_links.key_url)


def key_rows(
    keys: list[Row[Any]], keys_url: str, policy: RotationPolicy, now: dt.datetime, sent: dict[int, dict[str, int]]
) -> list[KeyRow]:
    """The rows of ``KeyService.listing``, as the page shows them; ``keys_url`` is the page's path,
    ``sent`` each key's last 24 hours (``rollups.day_counts``)."""
    displays = {key[0]: key[2] for key in keys}  # a rolled key links to its replacement's row
    rows = []
    # Unpacked by position (the order ``listing`` documents): a Row's attributes are looked up by
    # name, which was half of this loop's time.
    for (
        key_id,
        name,
        display,
        environment,
        created,
        used,
        expires,
        rolled,
        expired,
        reasons,
        chosen,
        replaced_by,
        exposed,
        exposed_url,
    ) in keys:
        status = key_status(None, expired, expires, rolled, now)
        flag = "; ".join([flag_reason(reason, expires, policy, now) for reason in reasons]) if reasons else ""
        rows.append(
            KeyRow(
                key_id,
                name,
                display,
                environment.value,
                scopes.described(chosen),
                status.value,
                displays.get(replaced_by, "a key since deleted") if replaced_by else "",
                key_anchor(replaced_by) if replaced_by in displays else "",
                relative(exposed, now) if exposed else "",
                utc(exposed),
                exposed_url or "",
                utc(created),
                relative(used, now),
                utc(used),
                relative(expires, now),
                utc(expires),
                flag,
                _sent(sent.get(key_id)),
                f"{keys_url}/{key_id}",
                key_anchor(key_id),
            )
        )
    return rows


@blueprint.get("/orgs/<int:org_id>/settings/api-keys")
@signed_in
def list_keys(org_id: int) -> Any:
    current = membership(org_id)
    now = utcnow()
    found = web().keys(db()).listing(current.organization)
    keys_url = url_for("keys.list_keys", org_id=org_id)  # the rows' links start alike: one url_for
    sent = rollups.day_counts(db(), current.organization.id, now)
    listed = key_rows(found, keys_url, web().policy, now, sent)
    # The Rotation column only when a key is flagged: an empty column explains nothing.
    flagged = any(row.flag for row in listed)
    rows = render_template("_key_rows.html", rows=listed, owner=current.is_owner, flagged=flagged)
    return page("keys.html", rows=Markup(rows), count=len(found), flagged=flagged)  # autoescaped by its own template


def _sent(counts: dict[str, int] | None) -> str:
    if not counts:
        return ""
    parts = [f"{counts['stored']} stored"]
    if counts["duplicates"]:
        parts.append(f"{counts['duplicates']} duplicates")
    if counts["refused"]:
        parts.append(f"{counts['refused']} refused")
    return " · ".join(parts)


@blueprint.get("/orgs/<int:org_id>/settings/api-keys/new")
@signed_in
def new_key(org_id: int) -> Any:
    owner(org_id, OWNERS_WORK)
    return _new_key_form({"environment": Environment.LIVE.value, "expiry": "never"}, list(scopes.ALL_SCOPES))


@blueprint.post("/orgs/<int:org_id>/settings/api-keys")
@signed_in
def create_key(org_id: int) -> Any:
    current = owner(org_id, OWNERS_WORK)  # before reading the form: anyone else gets 403, whatever they sent
    values = {field: request.form.get(field, "") for field in ("name", "environment", "expiry", "providers")}
    ticked = request.form.getlist("scope")
    if values["environment"] not in dict(ENVIRONMENTS) or values["expiry"] not in EXPIRIES:
        return _new_key_form(values, ticked, "choose an environment (live or test) and an expiry from the lists", 400)
    providers = [f"{scopes.WEBHOOKS}:{name}" for name in PROVIDER_LIST.split(values["providers"]) if name]
    try:
        environment, lifetime = Environment(values["environment"]), EXPIRIES[values["expiry"]]
        chosen = scopes.parse_scopes([*ticked, *providers])
        key, plaintext = (
            web().keys(db()).create(current.organization, values["name"], actor(), environment, lifetime, chosen)
        )
    except UserError as error:
        return _new_key_form(values, ticked, str(error), form_status(error))
    return _hand_off(org_id, key, plaintext)


@blueprint.route("/orgs/<int:org_id>/settings/api-keys/<int:key_id>/roll", methods=["GET", "POST"])
@signed_in
def roll_key(org_id: int, key_id: int) -> Any:
    keys, key = _owned_key(org_id, key_id)
    if request.method == "GET":
        return page("roll.html", key=key, graces=GRACE_LABELS, grace=DEFAULT_GRACE)
    grace = request.form.get("grace", "")
    if grace not in GRACES:
        return page("roll.html", 400, key=key, graces=GRACE_LABELS, grace=DEFAULT_GRACE, error="choose a grace period")
    try:
        new, plaintext = keys.roll(key.id, actor(), GRACES[grace])
    except UserError as error:
        status = form_status(error)
        return page("roll.html", status, key=key, graces=GRACE_LABELS, grace=grace, error=str(error))
    return _hand_off(org_id, new, plaintext)


@blueprint.get("/orgs/<int:org_id>/settings/api-keys/<int:key_id>/new")
@signed_in
def key_shown(org_id: int, key_id: int) -> Any:
    """The new key, once; afterwards (a refresh, the back button) its row on the list."""
    current = membership(org_id)
    key = web().keys(db()).get_in(current.organization, key_id)
    plaintext = take_handed_off_key(key.id)
    if plaintext is None:
        return redirect(url_for("keys.list_keys", org_id=org_id, _anchor=key_anchor(key.id)), 303)
    replaced = db().scalar(select(ApiKey).where(ApiKey.replaced_by_id == key.id))
    rendered = page(
        "key_shown.html",
        key=key,
        plaintext=plaintext,
        replaced=replaced,
        key_scopes=scopes.described(key.scopes),
        setup=Setup.of(web().settings),
        anchor=key_anchor(key.id),
    )
    return shown_once(rendered)


@blueprint.route("/orgs/<int:org_id>/settings/api-keys/<int:key_id>/delete", methods=["GET", "POST"])
@signed_in
def delete_key(org_id: int, key_id: int) -> Any:
    keys, key = _owned_key(org_id, key_id)
    if request.method == "GET":
        return page("delete.html", key=key)
    try:
        keys.delete(key.id, actor())
    except UserError as error:
        return page("delete.html", form_status(error), key=key, error=str(error))
    db().commit()
    flash(f"Deleted the key '{key.name}' ({key.display}); it no longer authenticates.")
    return redirect(url_for("keys.list_keys", org_id=org_id), 303)


def _owned_key(org_id: int, key_id: int) -> tuple[KeyService, ApiKey]:
    """The key, if it is the organization's (404 otherwise, as for an unknown id) and the signed-in
    member is an owner (403 otherwise)."""
    current = membership(org_id)
    keys = web().keys(db())
    key = keys.get_in(current.organization, key_id)
    organizations.require_owner(db(), current.organization, actor(), OWNERS_WORK)
    return keys, key


def _hand_off(org_id: int, key: ApiKey, plaintext: str) -> Any:
    """Commit the new key with its hand-off, and redirect to the page that shows it."""
    hand_off_key(key.id, plaintext)
    return redirect(url_for("keys.key_shown", org_id=org_id, key_id=key.id), 303)


@dataclass(frozen=True, slots=True)
class Setup:
    """This installation's addresses, for the snippets beside a new key."""

    broker_url: str  # its password masked: producers get users of their own
    embedded_broker: bool
    edge_url: str  # where producers POST over HTTP: `userpath edge` at USERPATH_EDGE_BASE_URL

    @classmethod
    def of(cls, settings: Settings) -> Setup:
        return cls(
            broker_url=maybe_sanitize_url(settings.broker_url),
            embedded_broker=settings.broker_url.startswith("sqla+"),
            edge_url=f"{settings.edge_base_url.rstrip('/')}/v1/track",
        )


def _new_key_form(values: dict[str, str], ticked: list[str], error: str | None = None, status: int = 200) -> Any:
    return page(
        "new_key.html",
        status,
        values=values,
        ticked=ticked,
        environments=ENVIRONMENTS,
        expiries=EXPIRY_LABELS,
        scope_choices=SCOPE_CHOICES,
        error=error,
    )
