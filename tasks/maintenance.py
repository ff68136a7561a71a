"""Beat's storage passes: partitions made ahead, and event retention. The work is in the core."""

from __future__ import annotations

import logging

from config.celery import APPLY_RETENTION_TASK, MAINTAIN_PARTITIONS_TASK
from config.settings import get_settings
from tasks.app import app
from tasks.base import UserPathTask
from userpath_worker import metrics, runtime
from userpath_worker.db import utcnow
from userpath_worker.events import partitions, retention

logger = logging.getLogger("userpath.retention")


@app.task(name=MAINTAIN_PARTITIONS_TASK, base=UserPathTask, shared=False)
def maintain_partitions() -> dict[str, object]:
    done = partitions.maintain(runtime.engine(), utcnow().date())
    for table, rows in done.default_rows.items():
        metrics.DEFAULT_PARTITION_ROWS.labels(table).set(rows)
    return {"made": done.made, "default_rows": done.default_rows}


@app.task(name=APPLY_RETENTION_TASK, base=UserPathTask, shared=False)
def apply_retention() -> dict[str, object]:
    run = retention.apply_retention(runtime.engine(), get_settings().event_retention_days, utcnow())
    metrics.RETENTION_RUNS.inc()
    metrics.RETENTION_PARTITIONS_DROPPED.labels("events").inc(len(run.partitions_dropped))
    metrics.RETENTION_PARTITIONS_DROPPED.labels("event_ids").inc(len(run.event_ids_weeks_dropped))
    metrics.RETENTION_EVENTS_DELETED.inc(sum(run.events_deleted.values()))
    summary = run.as_dict()
    logger.info("retention pass: %s", summary)
    return summary
