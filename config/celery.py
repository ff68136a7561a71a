"""Celery configuration, built from the settings. Every choice here is part of a guarantee.

Wire contract: see docs/contract.md. Reliability: late acks + a unique constraint on
(org_id, event_id) turn Celery's at-least-once delivery into exactly-once storage.
"""

from __future__ import annotations

from typing import Any

from kombu import Exchange, Queue

from config.settings import Settings
from userpath_client.contract import (
    EVENTS_QUEUE,
    INGESTION_QUEUES,
    WEBHOOK_TASK,
    WEBHOOKS_QUEUE,
    exchange_of,
    queue_arguments,
)

# The worker's own tasks and queue, beside the producers' contract: only beat and the worker
# send these, so they are named here, once.
MAINTENANCE_QUEUE = "userpath.maintenance"  # beat's rotation pass and reminder deliveries
FLAG_STALE_KEYS_TASK = "userpath.flag_stale_keys"
DELIVER_REMINDER_TASK = "userpath.deliver_reminder"
QUEUES = (*INGESTION_QUEUES, MAINTENANCE_QUEUE)


def transport_options(settings: Settings) -> dict[str, Any]:
    if settings.broker_url.startswith("redis"):
        # Redis re-delivers an unacknowledged message after this many seconds. kombu looks for
        # such messages only every interval x throttle seconds (100 s by default): look every
        # 10 s at most, so a dead worker's messages come back soon after the timeout.
        return {
            "visibility_timeout": settings.visibility_timeout,
            "unacked_restore_interval": min(10, settings.visibility_timeout),
            "unacked_restore_throttle": 1,
        }
    # RabbitMQ re-delivers as soon as the consumer's connection closes. The embedded SQLAlchemy
    # transport hands every option to create_engine, so it gets none.
    return {}


def celery_config(settings: Settings) -> dict[str, Any]:
    return {
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        # Producers may be written in any language: JSON only. A pickle or yaml message is
        # refused before it is deserialized (and dead-lettered by our consumer).
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_protocol": 2,
        # We keep no task results: events are the output, and a result backend would be one
        # more place a payload (and its key) could be copied to.
        "result_backend": None,
        "task_ignore_result": True,
        # Acknowledge after the task ran, and give the message back if the worker process dies,
        # so a crash re-delivers instead of losing the envelope. Storage is idempotent.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # Few messages held per process: with late acks these are what a crash re-delivers,
        # and envelopes can carry 1000 events each. (The batched ingestion step keeps its own
        # prefetch window on RabbitMQ: tasks/ingestion/amqp_transport.py.)
        "worker_prefetch_multiplier": 4,
        # Each queue on its own direct exchange, keyed by its name. A bare Queue(name) would be
        # bound to the default queue's exchange and key, and a message routed to one queue
        # would land in all four. On RabbitMQ producers publish to these exchanges (the
        # contract's exchange_of): a producer user may write to the ingestion queues' only.
        "task_queues": [
            Queue(
                name,
                Exchange(exchange_of(name)),
                routing_key=name,
                queue_arguments=queue_arguments(settings.queue_type) if name in INGESTION_QUEUES else None,
            )
            for name in QUEUES
        ],
        "task_default_queue": EVENTS_QUEUE,
        "task_routes": {
            WEBHOOK_TASK: {"queue": WEBHOOKS_QUEUE},
            FLAG_STALE_KEYS_TASK: {"queue": MAINTENANCE_QUEUE},
            DELIVER_REMINDER_TASK: {"queue": MAINTENANCE_QUEUE},
        },
        "broker_transport_options": transport_options(settings),
        # Envelopes are at most 1 MiB, so a stuck task is a bug, not a big batch.
        "task_time_limit": 300,
        "task_soft_time_limit": 240,
        "worker_max_memory_per_child": 400_000,  # KiB: recycle a child that grew past 400 MB
        "timezone": "UTC",
        "enable_utc": True,
    }
