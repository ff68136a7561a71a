"""What an organization's keys send and what was refused: a key's page (counts, a chart, its last
event and refusal), the Ingestion tab (the organization's rate limit at the edge and the events it
answered 429, refusals by reason and key, with samples, and Replay for owners) and Live events (the
100 that occurred last, refreshed by the page itself).

Every member reads them; Replay is an owner's, through the replay service the CLI uses. The
figures come from the keys' counters (``events.rollups``), never from a count over events. A
refusal without a key of this organization (a malformed, mistyped or unknown key) is nobody's
but the operator's (``userpath deadletter list --unattributed``) and is never shown here.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, NamedTuple

from flask import Blueprint, abort, flash, redirect, request, url_for
from sqlalchemy import select

from userpath_worker.db import utcnow
from userpath_worker.deadletter import services as dead_letters
from userpath_worker.deadletter.models import Reason
from userpath_worker.errors import UserError
from userpath_worker.events import rollups
from userpath_worker.events.replay import REPLAYABLE, ReplayResult, replay_dead_letters
from userpath_worker.events.storage import latest_events
from userpath_worker.keys.models import ApiKey
from userpath_worker.organizations.services import default_rate_limit, own_rate_limit
from userpath_worker.web.context import actor, db, membership, owner, page, signed_in, web

blueprint = Blueprint("ingestion", __name__)

LIVE_EVENTS = 100
LIVE_REFRESH_SECONDS = 3
SAMPLES = 3  # the newest dead letters shown for each reason
PREVIEW_CHARS = 600
CHART_WIDTH, CHART_HEIGHT = 300, 60

# Each reason a key's owner can meet: what it means, and what to do.
EXPLANATIONS: dict[str, tuple[str, str]] = {
    Reason.DELETED_KEY: ("The key was deleted.", "Give the producer a current key (Settings → API Keys)."),
    Reason.EXPIRED_KEY: ("The key expired, or its grace after a roll ended.", "Give the producer the new key."),
    Reason.SCOPE_DENIED: (
        "The key may not send this kind of message.",
        "Use a key whose scopes cover it, or create one that does.",
    ),
    Reason.INVALID_ENVELOPE: (
        "The message is not a batch of events as the contract describes it.",
        "Fix the producer (see the detail), then Replay.",
    ),
    Reason.INVALID_EVENT: (
        "An event misses a field or has one of the wrong type.",
        "Fix the producer (see the detail), then Replay.",
    ),
    Reason.TOO_LARGE: (
        "The event or message is over the contract's size limit.",
        "Send smaller events (fewer or shorter properties); Replay stores what now fits.",
    ),
    Reason.UNSIGNED_WEBHOOK: (
        "A webhook came without a signature from a provider you have a signing secret for.",
        "Check the provider's webhook settings, then Replay.",
    ),
    Reason.BAD_SIGNATURE: (
        "A webhook's signature did not verify, or was too old.",
        "Check the signing secret (Settings → Webhooks), then Replay; a forgery stays refused.",
    ),
    Reason.INTERNAL_ERROR: ("Our side failed to store it; nothing is lost.", "Replay once the operator says so."),
    rollups.RATE_LIMITED: (
        "The edge answered 429: the organization sent over its rate limit. Nothing was kept; each time "
        "the events were sent counts.",
        "Wait Retry-After and send them again, as Segment's libraries do: nothing is lost. Every event "
        "counts alone or in a batch, so spread the sending out; if your steady rate is over the limit, "
        "ask your operator to raise it (userpath orgs set-limits).",
    ),
}


class Bar(NamedTuple):
    """One day of a key's chart, as SVG rectangles: stored on top of refused."""

    x: int
    day: str
    stored: int
    refused: int
    stored_y: int
    stored_height: int
    refused_y: int
    refused_height: int


def chart(daily: dict[dt.date, Any], today: dt.date, days: int = rollups.MONTH_DAYS) -> list[Bar]:
    """A bar per day for the last ``days`` days, scaled to the busiest day."""
    totals = []
    for offset in range(days - 1, -1, -1):
        day = today - dt.timedelta(days=offset)
        summed = rollups.KeyActivity.summed(daily.get(day, {}))
        totals.append((day, summed["stored"], summed["refused"]))
    busiest = max([stored + refused for _, stored, refused in totals] + [1])
    width = CHART_WIDTH // days
    bars = []
    for index, (day, stored, refused) in enumerate(totals):
        refused_height = round(refused * CHART_HEIGHT / busiest)
        stored_height = round(stored * CHART_HEIGHT / busiest)
        refused_y = CHART_HEIGHT - refused_height
        bars.append(
            Bar(
                index * width,
                day.isoformat(),
                stored,
                refused,
                refused_y - stored_height,
                stored_height,
                refused_y,
                refused_height,
            )
        )
    return bars


@blueprint.get("/orgs/<int:org_id>/settings/api-keys/<int:key_id>")
@signed_in
def key_activity(org_id: int, key_id: int) -> Any:
    current = membership(org_id)
    key = web().keys(db()).get_in(current.organization, key_id)
    now = utcnow()
    activity = rollups.key_activity(db(), current.organization.id, key.id, now)
    return page(
        "key_activity.html",
        key=key,
        activity=activity,
        day=activity.summed(activity.day),
        month=activity.summed(activity.month),
        bars=chart(activity.daily, now.date()),
        chart_size=(CHART_WIDTH, CHART_HEIGHT),
        explanations=EXPLANATIONS,
        now=now,
    )


class Sample(NamedTuple):
    id: int
    received: dt.datetime
    key: str
    detail: str
    preview: str  # the stored payload, scrubbed when it was recorded, as the CLI's JSON shows it
    replayed: bool


@blueprint.get("/orgs/<int:org_id>/ingestion")
@signed_in
def refusals(org_id: int) -> Any:
    current = membership(org_id)
    org = current.organization.id
    now = utcnow()
    groups = rollups.refusals_by_key(db(), org, now)
    rate_limited = rollups.rate_limited_by_key(db(), org, now)
    key_ids = {key_id for _, key_id, _, _ in groups} | {row.api_key_id for row in rate_limited}
    keys = {
        key_id: (name, display, deleted)
        for key_id, name, display, deleted in db().execute(
            select(ApiKey.id, ApiKey.name, ApiKey.display, ApiKey.deleted_at.is_not(None)).where(
                ApiKey.org_id == org, ApiKey.id.in_(key_ids)
            )
        )
    }

    def shown(key_id: int) -> str:
        name, display, deleted = keys.get(key_id, ("?", f"#{key_id}", True))
        return f"{name} ({display}){' · deleted' if deleted else ''}"

    by_reason: dict[str, list[tuple[str, int, dt.datetime]]] = {}
    for reason, key_id, count, last in groups:
        by_reason.setdefault(reason, []).append((shown(key_id), count, last))
    own = own_rate_limit(db(), org)
    samples = {}
    for reason in by_reason:
        found = dead_letters.list_dead_letters(db(), org, reason, SAMPLES)
        samples[reason] = [
            Sample(
                letter.id,
                letter.received_at,
                keys.get(letter.api_key_id, ("", "", False))[1] if letter.api_key_id else "",
                letter.detail,
                json.dumps(letter.payload, ensure_ascii=False, default=str)[:PREVIEW_CHARS],
                letter.replayed_at is not None,
            )
            for letter, _name in found
        ]
    return page(
        "ingestion.html",
        limit=own or default_rate_limit(web().settings),
        own_limit=own is not None,
        rate_limited=[(shown(row.api_key_id), row) for row in rate_limited],
        rate_limited_totals=(sum(row.day for row in rate_limited), sum(row.month for row in rate_limited)),
        by_reason=by_reason,
        samples=samples,
        explanations=EXPLANATIONS,
        replayable={reason.value for reason in REPLAYABLE},
        now=now,
    )


@blueprint.post("/orgs/<int:org_id>/ingestion/replay")
@signed_in
def replay(org_id: int) -> Any:
    current = owner(org_id, "replay dead letters")  # 404 for another organization, 403 for a member
    reason = request.form.get("reason", "")
    if reason not in {r.value for r in REPLAYABLE}:
        abort(400)
    db().commit()  # the replay writes in transactions of its own: end this one (SQLite's write lock)
    result = ReplayResult()
    try:
        # The running totals after each batch: the last are the replay's.
        for result in replay_dead_letters(web().form_sessions.begin, current.organization, actor(), Reason(reason)):  # noqa: B007
            continue
    except UserError as error:
        flash(str(error))
    else:
        flash(f"Replayed {reason}: {result.stored} of {result.examined} now stored.")
    return redirect(url_for("ingestion.refusals", org_id=org_id), 303)


@blueprint.get("/orgs/<int:org_id>/events/live")
@signed_in
def live_events(org_id: int) -> Any:
    current = membership(org_id)
    view = "raw" if request.args.get("view") == "raw" else "pretty"
    paused = request.args.get("paused") == "1"
    found = latest_events(db(), current.organization.id, LIVE_EVENTS)
    key_ids = {event.api_key_id for event in found}
    keys = dict(
        db()
        .execute(
            select(ApiKey.id, ApiKey.display).where(ApiKey.org_id == current.organization.id, ApiKey.id.in_(key_ids))
        )
        .all()
    )
    raw = {
        event.id: json.dumps(
            {
                "event_id": event.event_id,
                "event": event.name,
                "user_id": event.user_id,
                "anonymous_id": event.anonymous_id,
                "properties": event.properties,
                "context": event.context,
                "timestamp": event.timestamp,
                "sent_at": event.sent_at,
                "received_at": event.received_at,
            },
            indent=2,
            ensure_ascii=False,
            default=str,
        )
        for event in found
    }
    return page(
        "live_events.html",
        events=found,
        keys=keys,
        raw=raw,
        view=view,
        paused=paused,
        refresh=LIVE_REFRESH_SECONDS,
        now=utcnow(),
    )
