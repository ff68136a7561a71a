"""Sign-in throttling that parallel requests cannot race and nobody can turn against an owner.

An attempt is counted under keys, each with a limit of failures in a window that starts at the
first failure (FAILURE_WINDOW):

- from a browser that has not signed in to the account before: the e-mail with the client address
  (MAX_FAILURES: one guesser slows down on one account, and only there: the owner signing in from
  elsewhere, or to another account from the same address, is not refused), and the e-mail from
  every such browser (MAX_ACCOUNT_FAILURES: guessing spread over many addresses stops too; the
  account is then closed to new browsers only);
- from a browser that signed in to this account before (it carries a signed cookie the web pages
  set, see ``userpath_worker/web/auth.py``): that browser alone (MAX_FAILURES). Nobody else's
  failures count against it, so the owner's own browser is never locked out by someone else.

``hold`` locks the attempt's counters (``INSERT ... ON CONFLICT DO UPDATE``: a row lock on
PostgreSQL, the write lock on SQLite) before the password is checked and until the transaction
ends, so the next attempt under the same key sees this one's failure. A refused attempt checks no
password and counts nothing. Keys are SHA-256 digests: no e-mail or address is kept here.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from dataclasses import dataclass

from sqlalchemy import case, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from userpath_worker.accounts.models import SignInThrottle
from userpath_worker.errors import UserError

FAILURE_WINDOW = dt.timedelta(minutes=15)
MAX_FAILURES = 5  # an e-mail from one address, or from one browser that signed in to it before
MAX_ACCOUNT_FAILURES = 20  # an e-mail from every browser that never signed in to it
_CLEANUP_BATCH = 500


class TooManyAttempts(UserError):
    """Too many failed sign-ins for this e-mail from here."""

    def __init__(self, retry_after_minutes: int) -> None:
        self.retry_after_minutes = retry_after_minutes
        unit = "minute" if retry_after_minutes == 1 else "minutes"
        super().__init__(f"too many failed sign-ins; try again in {retry_after_minutes} {unit}")


@dataclass(frozen=True, slots=True)
class Attempt:
    """Who tries which e-mail: the client's address (empty when unknown) and, when the browser has
    signed in to this e-mail's account before, that browser's id."""

    email: str
    client_address: str = ""
    known_browser: str | None = None

    def limits(self) -> dict[str, int]:
        """Each key the attempt is counted under, with its limit."""
        if self.known_browser:
            return {_key("browser", self.email, self.known_browser): MAX_FAILURES}
        return {
            _key("address", self.email, self.client_address[:64]): MAX_FAILURES,
            _key("account", self.email): MAX_ACCOUNT_FAILURES,
        }


def _key(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def hold(session: Session, attempt: Attempt, now: dt.datetime) -> None:
    """Lock the attempt's counters until the transaction ends; TooManyAttempts (and nothing
    counted) if any is at its limit. Call it before anything else in the transaction: on SQLite a
    transaction that has read cannot start writing once another one has committed."""
    limits = attempt.limits()
    keys = sorted(limits)  # one order for every attempt: no deadlock between two of them
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    statement = dialect.insert(SignInThrottle).values(
        [{"key": key, "failures": 0, "window_started_at": now} for key in keys]
    )
    # The no-op update takes the row's lock when it exists, and returns it as it is.
    locked = statement.on_conflict_do_update(
        index_elements=["key"], set_={"failures": SignInThrottle.failures}
    ).returning(SignInThrottle.key, SignInThrottle.failures, SignInThrottle.window_started_at)
    waits = [
        started + FAILURE_WINDOW - now
        for key, failures, started in session.execute(locked)
        if failures >= limits[key] and started + FAILURE_WINDOW > now
    ]
    if waits:
        raise TooManyAttempts(max(1, math.ceil(max(waits).total_seconds() / 60)))


def count_failure(session: Session, attempt: Attempt, now: dt.datetime) -> None:
    """One more failure under each of the attempt's keys (held); counters whose window is over are
    deleted on the way."""
    expired = SignInThrottle.window_started_at <= now - FAILURE_WINDOW
    restart = expired | (SignInThrottle.failures == 0)  # this failure opens a new window
    session.execute(
        update(SignInThrottle)
        .where(SignInThrottle.key.in_(attempt.limits()))
        .values(
            failures=case((restart, 1), else_=SignInThrottle.failures + 1),
            window_started_at=case((restart, now), else_=SignInThrottle.window_started_at),
        )
        .execution_options(synchronize_session=False)
    )
    # Those of other keys, unless an attempt holds them right now.
    stale = select(SignInThrottle.key).where(expired).limit(_CLEANUP_BATCH).with_for_update(skip_locked=True)
    session.execute(
        delete(SignInThrottle)
        .where(SignInThrottle.key.in_(stale.scalar_subquery()))
        .execution_options(synchronize_session=False)
    )


def forgive(session: Session, attempt: Attempt) -> None:
    """A success: the failures counted under the attempt's keys are forgotten (those of other
    addresses and browsers are not)."""
    session.execute(
        delete(SignInThrottle)
        .where(SignInThrottle.key.in_(attempt.limits()))
        .execution_options(synchronize_session=False)
    )
