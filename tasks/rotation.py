"""The rotation pass (on beat's schedule) and the delivery of each reminder it writes."""

from __future__ import annotations

import logging
from collections import Counter
from contextlib import AbstractContextManager

from sqlalchemy.orm import Session

from config.celery import DELIVER_REMINDER_TASK, FLAG_STALE_KEYS_TASK
from config.settings import get_settings
from tasks.app import app
from tasks.base import UserPathTask
from userpath_worker import runtime
from userpath_worker.rotation import delivery, services
from userpath_worker.rotation.delivery import MAX_ATTEMPTS, DeliveryOutcome

logger = logging.getLogger("userpath.rotation")


def _transaction() -> AbstractContextManager[Session]:
    return runtime.session_factory().begin()


@app.task(name=FLAG_STALE_KEYS_TASK, base=UserPathTask, shared=False)
def flag_stale_keys() -> dict[str, int]:
    policy = services.RotationPolicy.from_settings(get_settings())
    totals: Counter[str] = Counter()
    for batch in services.run_pass(_transaction, policy):
        totals.update(batch.counts())
    # Every reminder still to send, not only this pass's: a send lost between a commit and
    # its enqueue, or a reminder out of retries in a dead worker, goes out with the next pass.
    for reminder_id in delivery.unclaimed_reminders(_transaction):
        deliver_reminder.delay(reminder_id)
        totals["queued"] += 1
    logger.info("rotation pass: %s", dict(totals))
    return dict(totals)


@app.task(name=DELIVER_REMINDER_TASK, bind=True, base=UserPathTask, max_retries=MAX_ATTEMPTS - 1, shared=False)
def deliver_reminder(self: UserPathTask, reminder_id: int) -> str:
    result = delivery.deliver_as_configured(_transaction, int(reminder_id), get_settings())
    if result.outcome is DeliveryOutcome.FAILED and self.request.retries < self.max_retries:
        raise self.retry(countdown=self.retry_delay())
    return result.outcome.value
