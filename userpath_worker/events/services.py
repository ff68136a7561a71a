"""Ingestion: authenticate a message by its key, validate it, store its events exactly once and
dead-letter everything else with a reason.

One message is one transaction: the events (one multi-row INSERT ... ON CONFLICT DO NOTHING),
its dead letters, the key's last-used time and its counters (``events.rollups``) commit together,
so a crash or a redelivery can neither lose nor duplicate anything. What to store and what to dead-letter is decided by
``events.verdicts``; the events are written by ``events.storage``.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from userpath_client.contract import TRACK_TASK, WEBHOOK_TASK
from userpath_worker.db import utcnow
from userpath_worker.deadletter import services as dead_letters
from userpath_worker.deadletter.models import Reason
from userpath_worker.deadletter.services import Delivery, Rejection, without_key
from userpath_worker.events import rollups, verdicts
from userpath_worker.events.models import Source
from userpath_worker.events.storage import insert_events
from userpath_worker.keys import tokens
from userpath_worker.keys.auth import KeyAuthenticator
from userpath_worker.keys.services import KeyIdentity
from userpath_worker.webhooks.services import SigningKeys

DEFAULT_WEBHOOK_TOLERANCE = dt.timedelta(seconds=300)  # Stripe's and Standard Webhooks' default


@dataclass(frozen=True, slots=True)
class IngestOutcome:
    """What became of one message: events stored, events already stored (re-sent: kept once,
    counted as duplicates) and dead letters.

    The other fields are for logs and metrics; two outcomes are equal when their counts are.
    """

    stored: int
    dead_lettered: int
    duplicates: int = 0
    reasons: dict[str, int] = field(default_factory=dict, compare=False)  # dead letters by reason
    org_id: int | None = field(default=None, compare=False)
    key: str | None = field(default=None, compare=False)  # the key's display form
    key_id: int | None = field(default=None, compare=False)

    @classmethod
    def of(
        cls,
        stored: int,
        rejections: Sequence[Rejection],
        identity: KeyIdentity | None = None,
        key: str | None = None,
        duplicates: int = 0,
    ) -> IngestOutcome:
        """``key``: the display form of a key that identifies no one (unknown, deleted...)."""
        return cls(
            stored=stored,
            dead_lettered=len(rejections),
            duplicates=duplicates,
            reasons=dict(Counter(rejection.reason.value for rejection in rejections)),
            org_id=identity.org_id if identity else None,
            key=identity.display if identity else key,
            key_id=identity.key_id if identity else None,
        )


@dataclass(frozen=True, slots=True)
class Incoming:
    """One ``userpath.track`` or ``userpath.webhook`` message, decoded."""

    task: str
    args: Sequence[Any]
    kwargs: dict[str, Any]
    source: Source
    delivery: Delivery


@dataclass(frozen=True, slots=True)
class Refused:
    """A message dead-lettered before it could be judged: undecodable, not one of our tasks..."""

    rejection: Rejection
    delivery: Delivery


@dataclass(frozen=True, slots=True)
class _Judgement:
    """One message's rows and dead letters, before they are written."""

    delivery: Delivery
    rows: list[dict[str, Any]]
    rejections: list[Rejection]
    identity: KeyIdentity | None = None
    key: str | None = None  # the display form of a key refused without an identity

    def outcome(self, inserted: set[tuple[int, str]]) -> IngestOutcome:
        """The outcome, given the (org_id, event_id) the INSERT stored; each claims one row, so
        an event sent twice in one batch is stored once and counted once as a duplicate."""
        stored = 0
        for row in self.rows:
            event = (row["org_id"], row["event_id"])
            if event in inserted:
                inserted.discard(event)
                stored += 1
        return IngestOutcome.of(stored, self.rejections, self.identity, self.key, len(self.rows) - stored)


class Ingestor:
    def __init__(
        self,
        session_factory: sessionmaker[Session],
        authenticator: KeyAuthenticator,
        signing_keys: SigningKeys,
        webhook_tolerance: dt.timedelta = DEFAULT_WEBHOOK_TOLERANCE,
    ) -> None:
        self.session_factory = session_factory
        self.authenticator = authenticator
        self.signing_keys = signing_keys
        self.webhook_tolerance = webhook_tolerance

    def track(self, args: Sequence[Any], kwargs: dict[str, Any], source: Source, delivery: Delivery) -> IngestOutcome:
        """Handle one ``userpath.track`` message."""
        [outcome] = self.ingest([Incoming(TRACK_TASK, args, kwargs, source, delivery)])
        return outcome

    def webhook(self, args: Sequence[Any], kwargs: dict[str, Any], delivery: Delivery) -> IngestOutcome:
        """Handle one ``userpath.webhook`` message."""
        [outcome] = self.ingest([Incoming(WEBHOOK_TASK, args, kwargs, Source.WEBHOOK, delivery)])
        return outcome

    def ingest(self, messages: Sequence[Incoming | Refused]) -> list[IngestOutcome]:
        """Handle messages in one transaction: their events (one INSERT for all), their dead
        letters and their keys' last-used times commit together or not at all.

        A ``Refused`` message (one that could not even be decoded) is only dead-lettered; being
        written in the same transaction, a retried batch records it once.
        """
        with self.session_factory.begin() as session:
            judgements = [
                self._judge(session, message)
                if isinstance(message, Incoming)
                else _Judgement(message.delivery, [], [message.rejection])
                for message in messages
            ]
            inserted = insert_events(session, [row for judgement in judgements for row in judgement.rows])
            refused = [
                written
                for judgement in judgements
                for written in dead_letters.record_dead_letters(session, judgement.rejections, judgement.delivery)
            ]
            for key_id in {j.identity.key_id for j in judgements if j.rows and j.identity}:
                self.authenticator.mark_used(session, key_id)
            outcomes = [judgement.outcome(inserted) for judgement in judgements]
            _count(session, judgements, outcomes, refused)
        return outcomes

    def keep_for_replay(self, message: Incoming, detail: str) -> IngestOutcome:
        """Dead-letter, whole, a message that could not be stored for a reason of ours (the
        database refused it): owned by its key's organization, so that ``deadletter replay``
        stores it once the bug is fixed."""
        with self.session_factory.begin() as session:
            argument = verdicts.the_one_argument(message.args, message.kwargs)
            identity = None
            if not isinstance(argument, Rejection):
                found = self.authenticator.authenticate(session, argument.get("api_key"))
                identity = found if isinstance(found, KeyIdentity) else None
            rejection = Rejection(
                Reason.INTERNAL_ERROR,
                detail,
                argument.payload if isinstance(argument, Rejection) else without_key(argument),
                org_id=identity.org_id if identity else None,
                api_key_id=identity.key_id if identity else None,
            )
            refused = dead_letters.record_dead_letters(session, [rejection], message.delivery)
            _count(session, [], [], refused)
        return IngestOutcome.of(0, [rejection], identity)

    # One message: argument shape, size, authentication, then the task's own verdicts.

    def _judge(self, session: Session, incoming: Incoming) -> _Judgement:
        delivery = incoming.delivery
        message = verdicts.the_one_argument(incoming.args, incoming.kwargs)
        if isinstance(message, Rejection):
            return _Judgement(delivery, [], [message])
        refused = verdicts.size_refusal(message)
        if refused is not None:
            return _Judgement(delivery, [], [refused])

        identity = self.authenticator.authenticate(session, message.get("api_key"))
        refused = verdicts.key_refusal(message, identity, utcnow())
        if refused is not None:
            if isinstance(identity, KeyIdentity):
                return _Judgement(delivery, [], [refused], identity)
            return _Judgement(delivery, [], [refused], key=_display_form(message.get("api_key")))
        refused = verdicts.scope_refusal(message, identity, incoming.source)
        if refused is not None:
            return _Judgement(delivery, [], [refused], identity)
        if incoming.task == WEBHOOK_TASK:
            keys = self.signing_keys.of(session, identity.org_id)
            judged = verdicts.webhook_verdicts(message, identity, delivery, keys, self.webhook_tolerance)
        else:
            judged = verdicts.track_verdicts(message, identity, incoming.source, delivery)
        return _Judgement(delivery, judged.rows, judged.rejections, identity)


def _count(
    session: Session,
    judgements: Sequence[_Judgement],
    outcomes: Sequence[IngestOutcome],
    refused: Sequence[tuple[int | None, int | None, str]],
) -> None:
    """Add the batch to its keys' counters (the pages read these, never the events)."""
    tally = rollups.tally_of(
        (j.identity.org_id, j.identity.key_id, o.stored, o.duplicates)
        for j, o in zip(judgements, outcomes, strict=True)
        if j.identity is not None
    )
    for org_id, api_key_id, reason in refused:
        tally.add(org_id, api_key_id, reason)
    rollups.add_counts(session, tally, utcnow())


def _display_form(candidate: object) -> str | None:
    """The display form of a key-shaped value (one that was refused), None for anything else."""
    return (
        tokens.display_form(candidate)
        if isinstance(candidate, str) and tokens.KEY_PATTERN.fullmatch(candidate)
        else None
    )
