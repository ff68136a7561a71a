"""The rotation pass: flag stale keys, record reminders for their owners, enforce expiry.

A pass walks the keys that need a look in id order, a batch at a time, each batch in its own
transaction opened by the caller's ``transaction`` factory: memory stays bounded whatever the
number of keys, and no row stays locked for the whole pass.

Running a pass twice, or two passes at once, gives the same result. On PostgreSQL each batch
locks its keys (SELECT ... FOR UPDATE), so a second pass waits and then sees the first one's
``flagged_at``; a reminder's ``due_at`` is derived from that stored ``flagged_at``, and the
unique (api_key_id, due_at) constraint with INSERT ... ON CONFLICT DO NOTHING makes the second
insert of the same reminder a no-op. SQLite serializes writers on its own.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Row, func, literal, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from config.settings import Settings
from userpath_worker.audit import services as audit
from userpath_worker.db import Transaction, utcnow
from userpath_worker.keys.models import ApiKey
from userpath_worker.organizations.models import Organization
from userpath_worker.rotation.models import Reminder, RotationPass, StaleReason

BATCH_SIZE = 1000


class ExpiryReason(enum.StrEnum):
    EXPIRES_AT_PASSED = "expires_at_passed"
    ROLL_GRACE_ENDED = "roll_grace_ended"
    HARD_EXPIRY = "hard_expiry"  # flagged longer than USERPATH_ROTATION_HARD_EXPIRY_DAYS


@dataclass(frozen=True, slots=True)
class RotationPolicy:
    max_age: dt.timedelta
    unused_for: dt.timedelta
    expiring_window: dt.timedelta
    reminder_interval: dt.timedelta
    hard_expiry: dt.timedelta | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> RotationPolicy:
        days = settings.rotation_hard_expiry_days
        return cls(
            max_age=dt.timedelta(days=settings.rotation_max_age_days),
            unused_for=dt.timedelta(days=settings.rotation_unused_days),
            expiring_window=dt.timedelta(days=settings.rotation_expiring_window_days),
            reminder_interval=dt.timedelta(days=settings.rotation_reminder_interval_days),
            hard_expiry=dt.timedelta(days=days) if days else None,
        )

    def stale_reasons(self, key: Row[Any], now: dt.datetime) -> list[str]:
        """Why an active key should be rotated, in a fixed order; empty when it need not be."""
        reasons = []
        if key.created_at <= now - self.max_age:
            reasons.append(StaleReason.TOO_OLD.value)
        if (key.last_used_at or key.created_at) <= now - self.unused_for:
            reasons.append(StaleReason.UNUSED.value)
        if key.expires_at is not None and key.expires_at <= now + self.expiring_window:
            reasons.append(StaleReason.EXPIRING_SOON.value)
        return reasons

    def reminder_due_at(self, flagged_at: dt.datetime, now: dt.datetime) -> dt.datetime:
        """The start of the reminder interval ``now`` falls in, counted from ``flagged_at``.

        An overlapping pass that started earlier can see a ``flagged_at`` later than its ``now``:
        that is still the first interval, not the one before it (which would remind twice).
        """
        elapsed = max(now - flagged_at, dt.timedelta(0))
        return flagged_at + elapsed // self.reminder_interval * self.reminder_interval


@dataclass(frozen=True, slots=True)
class KeyChange:
    """What the pass did to one key, for the operator's output; never a secret."""

    key_id: int
    org: str
    name: str
    display: str
    reasons: tuple[str, ...]


@dataclass(slots=True)
class BatchResult:
    flagged: list[KeyChange] = field(default_factory=list)  # newly flagged, or new reasons
    cleared: list[KeyChange] = field(default_factory=list)  # no longer stale
    reminded: list[KeyChange] = field(default_factory=list)  # a reminder was recorded
    expired: list[KeyChange] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {
            "flagged": len(self.flagged),
            "cleared": len(self.cleared),
            "reminded": len(self.reminded),
            "expired": len(self.expired),
        }


def run_pass(transaction: Transaction, policy: RotationPolicy, now: dt.datetime | None = None) -> Iterator[BatchResult]:
    """One pass over every key, a batch per transaction; yields each batch after it is committed."""
    now = now or utcnow()
    totals: Counter[str] = Counter()
    after_id = 0
    while True:
        with transaction() as session:
            candidates = session.execute(_candidates(policy, now, after_id)).all()
            result = _process(session, policy, now, candidates)
        # Not "fewer than BATCH_SIZE": under a concurrent pass, locked rows that no longer
        # match are skipped, so a short batch need not be the last one.
        if not candidates:
            break
        totals.update(result.counts())
        yield result
        after_id = candidates[-1].id
    with transaction() as session:
        session.add(RotationPass(started_at=now, **{kind: totals[kind] for kind in BatchResult().counts()}))


def stale_keys(session: Session, organization: Organization | None = None) -> list[tuple[ApiKey, str]]:
    """Flagged keys with their organization's name, oldest flag first."""
    query = (
        select(ApiKey, Organization.name)
        .join(Organization, Organization.id == ApiKey.org_id)
        .where(ApiKey.flagged_at.is_not(None))
        .order_by(ApiKey.flagged_at, ApiKey.id)
    )
    if organization is not None:
        query = query.where(ApiKey.org_id == organization.id)
    return [(key, org_name) for key, org_name in session.execute(query)]


def _candidates(policy: RotationPolicy, now: dt.datetime, after_id: int) -> Any:
    """The next batch of keys that may be stale, flagged, or due to be marked expired."""
    return (
        select(
            ApiKey.id,
            ApiKey.org_id,
            Organization.name.label("org"),
            ApiKey.name,
            ApiKey.display,
            ApiKey.created_at,
            ApiKey.last_used_at,
            ApiKey.expires_at,
            ApiKey.rolled_at,
            ApiKey.flagged_at,
            ApiKey.flag_reasons,
        )
        .join(Organization, Organization.id == ApiKey.org_id)
        .where(
            ApiKey.id > after_id,
            ApiKey.deleted_at.is_(None),
            ApiKey.expired_at.is_(None),
            or_(
                ApiKey.flagged_at.is_not(None),
                ApiKey.created_at <= now - policy.max_age,
                func.coalesce(ApiKey.last_used_at, ApiKey.created_at) <= now - policy.unused_for,
                ApiKey.expires_at <= now + policy.expiring_window,
            ),
        )
        .order_by(ApiKey.id)
        .limit(BATCH_SIZE)
        .with_for_update(of=ApiKey)  # PostgreSQL: a concurrent pass waits for this batch
    )


def _process(session: Session, policy: RotationPolicy, now: dt.datetime, keys: list[Row[Any]]) -> BatchResult:
    """Decide per key, then write with a few set-based statements: keys that share what is
    written (the same reasons, the same due date) share one UPDATE or INSERT ... SELECT."""
    result = BatchResult()
    to_flag: dict[tuple[str, ...], list[int]] = defaultdict(list)
    to_clear: list[int] = []
    # By the expires_at they get: None keeps theirs, a hard expiry moves it to its deadline.
    to_expire: dict[dt.datetime | None, list[tuple[Row[Any], ExpiryReason]]] = defaultdict(list)
    to_remind: dict[tuple[dt.datetime, tuple[str, ...]], list[int]] = defaultdict(list)
    changes: dict[int, KeyChange] = {}
    for key in keys:
        if key.expires_at is not None and key.expires_at <= now:
            reason = ExpiryReason.ROLL_GRACE_ENDED if key.rolled_at else ExpiryReason.EXPIRES_AT_PASSED
            to_expire[None].append((key, reason))
            continue
        if key.rolled_at is not None:
            continue  # in its roll grace period: the replacement is what matters now
        reasons = tuple(policy.stale_reasons(key, now))
        changes[key.id] = change = KeyChange(key.id, key.org, key.name, key.display, reasons)
        if not reasons:
            if key.flagged_at is not None:
                to_clear.append(key.id)
                result.cleared.append(change)
        elif policy.hard_expiry and key.flagged_at and key.flagged_at + policy.hard_expiry <= now:
            to_expire[key.flagged_at + policy.hard_expiry].append((key, ExpiryReason.HARD_EXPIRY))
        else:
            if key.flagged_at is None or tuple(key.flag_reasons or ()) != reasons:
                to_flag[reasons].append(key.id)
                result.flagged.append(change)
            to_remind[policy.reminder_due_at(key.flagged_at or now, now), reasons].append(key.id)

    for reasons, ids in to_flag.items():
        _update_keys(session, ids, flag_reasons=list(reasons), flagged_at=func.coalesce(ApiKey.flagged_at, now))
    if to_clear:
        _update_keys(session, to_clear, flagged_at=None, flag_reasons=None)
    for new_expires_at, expiring in to_expire.items():
        # expires_at is what authentication checks, so a hard expiry moves it too.
        moved = {"expires_at": new_expires_at} if new_expires_at else {}
        ids = [key.id for key, _ in expiring]
        _update_keys(session, ids, expired_at=now, flagged_at=None, flag_reasons=None, **moved)
        _audit_expiries(session, now, expiring, new_expires_at)
        result.expired += [KeyChange(key.id, key.org, key.name, key.display, (why.value,)) for key, why in expiring]
    result.expired.sort(key=lambda change: change.key_id)
    for (due_at, reasons), ids in to_remind.items():
        recorded = session.scalars(_record_reminders(session, ids, list(reasons), due_at, now))
        result.reminded += [changes[key_id] for key_id in recorded]
    result.reminded.sort(key=lambda change: change.key_id)
    # The set-based statements bypass objects a caller may hold in this session: reload them.
    session.expire_all()
    return result


def _update_keys(session: Session, ids: list[int], **values: Any) -> None:
    session.execute(
        update(ApiKey).where(ApiKey.id.in_(ids)).values(**values),
        execution_options={"synchronize_session": False},
    )


def _audit_expiries(
    session: Session,
    now: dt.datetime,
    expiring: list[tuple[Row[Any], ExpiryReason]],
    new_expires_at: dt.datetime | None,
) -> None:
    audit.write(
        session,
        audit.SYSTEM,
        *(
            audit.Entry(
                key.org_id,
                "key.expired",
                key.id,
                {"reason": why.value, "expires_at": (new_expires_at or key.expires_at).isoformat()},
            )
            for key, why in expiring
        ),
        at=now,
    )


def _record_reminders(
    session: Session, ids: list[int], reasons: list[str], due_at: dt.datetime, now: dt.datetime
) -> Any:
    """INSERT ... SELECT a reminder for each key, except where one is recorded for that interval."""
    columns = Reminder.__table__.c
    rows = select(
        ApiKey.id,
        ApiKey.org_id,
        literal(reasons, columns.reasons.type),
        literal(due_at, columns.due_at.type),
        literal(now, columns.created_at.type),
        literal(0),
    ).where(ApiKey.id.in_(ids))
    return (
        _insert_unless_recorded(session)
        .from_select(["api_key_id", "org_id", "reasons", "due_at", "created_at", "attempts"], rows)
        .returning(Reminder.api_key_id)
    )


def _insert_unless_recorded(session: Session) -> Any:
    """INSERT INTO reminders that skips a reminder already recorded for that key and interval."""
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    return dialect.insert(Reminder).on_conflict_do_nothing(index_elements=["api_key_id", "due_at"])
