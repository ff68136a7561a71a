"""Wire contract v1 (docs/contract.md): the names, limits and key format both sides speak.

This module is the contract's one home. The producer client and the worker import it; neither
writes a queue name, a task name, a limit or the key format anywhere else. It imports nothing
but the standard library, so it costs a producer nothing to install.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import string
import zlib
from typing import Literal

# -- queues and tasks: a message is a Celery protocol-2 task call on one of these queues -----------

EVENTS_QUEUE = "userpath.events"  # server-side events from backend services
JOBS_QUEUE = "userpath.jobs"  # events reported by background jobs
WEBHOOKS_QUEUE = "userpath.webhooks"  # third-party webhooks forwarded by receivers
INGESTION_QUEUES = (EVENTS_QUEUE, JOBS_QUEUE, WEBHOOKS_QUEUE)

TRACK_TASK = "userpath.track"  # an envelope of events, on the events or jobs queue
WEBHOOK_TASK = "userpath.webhook"  # one forwarded webhook delivery, on the webhooks queue

QueueType = Literal["classic", "quorum"]

# The environment variable the documented producers (docs/contract.md, the README) read their key
# from: a producer's own, so the worker never warns about it as a mistyped setting.
KEY_VARIABLE = "USERPATH_KEY"
# Where producers (the client, the demo's snippet, the documented Node, Go and Ruby producers) find
# the broker: the worker's own setting of the same name, so one environment configures both.
BROKER_URL_VARIABLE = "USERPATH_BROKER_URL"

# How a message is published, as JSON in UTF-8 (the worker refuses every other content type):
# into its key's lane (below); on Redis pushed onto the lane's list (or, by a producer that knows
# no lanes, onto the list named as the queue: kombu's default exchange, ""); on RabbitMQ, to the
# queue's own direct exchange, named as the queue and declared by the worker, with the lane's
# shard queue (or the queue's own name) as routing key. Those three exchanges are all a producer
# user may write to: the default exchange reaches every queue by name, the worker's remote
# control included. On the embedded broker, to the queue by its name.
DEFAULT_EXCHANGE = ""
CONTENT_TYPE = "application/json"
CONTENT_ENCODING = "utf-8"


def exchange_of(queue: str) -> str:
    """The RabbitMQ exchange a message for ``queue`` is published to: the queue's own."""
    return queue


def queue_arguments(queue_type: QueueType | str) -> dict[str, str] | None:
    """RabbitMQ's arguments of an ingestion queue, as the worker declares it."""
    return {"x-queue-type": "quorum"} if queue_type == "quorum" else None


# -- lanes: one key's flood must not delay the others (docs/contract.md, "Lanes") ---------------
# Every key has a lane, named by a hash of the key (never the key): a producer publishes its
# messages into its lane, and the worker takes the lanes in turn, a few messages from each.
# On Redis a lane is a list of its own, listed in its queue's ready set while it holds messages;
# on RabbitMQ lanes are hashed onto LANE_SHARDS shard queues, and a lane that sends faster than
# LANE_RATE_EVENTS (after a burst of LANE_BURST_EVENTS) goes to the queue's overflow shard, which
# the worker takes in turn with the others ("ingested, slower"). Messages on the queue itself (a
# producer that knows no lanes) are one more lane, taken in turn too.

LANE_SHARDS = 8
LANE_RATE_EVENTS = 1000  # RabbitMQ: a lane's events a second before it overflows
LANE_BURST_EVENTS = 5000
# The most messages a lane (Redis) or a shard queue (RabbitMQ) holds: past it a publish is
# refused (the client keeps the events and retries, the edge answers 503), so a flood cannot fill
# the broker's memory. 20,000 envelopes of 100 events are two million events.
MAX_LANE_MESSAGES = 20_000
LANE_INFIX = ".lane."
READY_SUFFIX = ".lanes"


def lane_of(key: str) -> str:
    """The lane of ``key``: 16 hex digits of a hash that names the key without revealing it."""
    return hashlib.sha256(b"userpath-lane\0" + key.encode()).hexdigest()[:16]


def lane_list(queue: str, lane: str) -> str:
    """Redis: the list that holds ``lane``'s messages for ``queue``."""
    return f"{queue}{LANE_INFIX}{lane}"


def ready_lanes(queue: str) -> str:
    """Redis: the sorted set of ``queue``'s lanes that hold messages, in the order they are taken."""
    return f"{queue}{READY_SUFFIX}"


def shard_queue(queue: str, lane: str) -> str:
    """RabbitMQ: the shard queue of ``lane`` (its routing key on ``exchange_of(queue)``)."""
    return f"{queue}.shard.{int(lane[:8], 16) % LANE_SHARDS}"


def overflow_queue(queue: str) -> str:
    """RabbitMQ: where a lane past its rate goes, on ``exchange_of(queue)``."""
    return f"{queue}.overflow"


def lane_queues(queue: str) -> tuple[str, ...]:
    """RabbitMQ: the queues the worker declares and consumes beside ``queue``."""
    return (*(f"{queue}.shard.{shard}" for shard in range(LANE_SHARDS)), overflow_queue(queue))


def ingestion_queue_of(name: str) -> str:
    """RabbitMQ: the ingestion queue whose shard or overflow queue ``name`` is (``name`` itself
    when it is an ingestion queue): a message's source is its ingestion queue's, whichever lane
    carried it."""
    return _INGESTION_QUEUE_OF.get(name, name)


def lane_queue_arguments(queue_type: QueueType | str) -> dict[str, object]:
    """RabbitMQ's arguments of a shard or overflow queue: bounded, refusing what is past the bound."""
    return {**(queue_arguments(queue_type) or {}), "x-max-length": MAX_LANE_MESSAGES, "x-overflow": "reject-publish"}


# -- limits -----------------------------------------------------------------------------------

MAX_ENVELOPE_BYTES = 1024 * 1024  # a message's body; Segment allows 500 KB per batch
MAX_EVENT_BYTES = 32 * 1024  # one event as compact JSON, as Segment
MAX_BATCH_EVENTS = 1000  # events in one envelope
MAX_NESTING = 254  # levels of arrays and objects in a message body: orjson's own limit

# The HTTP edge (``userpath edge``) speaks Segment's Tracking API with Segment's own limits.
HTTP_MAX_CALL_BYTES = 32 * 1024  # the body of one call (/v1/track, /v1/identify...)
HTTP_MAX_BATCH_BYTES = 500 * 1024  # the body of /v1/batch, after gzip is undone
HTTP_MAX_BATCH_EVENTS = 2500  # calls in one /v1/batch (sent on as envelopes of MAX_BATCH_EVENTS)
HTTP_MAX_WEBHOOK_BYTES = 512 * 1024  # a provider's delivery to /v1/webhooks/...

EVENT_NAME_MAX = 200
PERSON_ID_MAX = 200  # user_id and anonymous_id
EVENT_ID_MAX = 100
DELIVERY_ID_MAX = 200  # a webhook's provider-given delivery id
PROVIDER_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,49}$"  # a webhook's provider name

# -- the API key: ``up_<env>_`` + 32 random base-62 characters + a 6-character checksum ----------
# Modelled on GitHub's token format: the fixed prefix lets secret scanners find leaked keys, and
# the CRC-32 checksum lets either side refuse mistyped or made-up keys without a database query.

KEY_PREFIX = "up_"
KEY_ENVIRONMENTS = ("live", "test")
KEY_ALPHABET = string.digits + string.ascii_uppercase + string.ascii_lowercase
KEY_RANDOM_LENGTH = 32
KEY_CHECKSUM_LENGTH = 6
# What a secret scanner (and our own leak tests) look for.
KEY_PATTERN = re.compile(r"up_(?:live|test)_[0-9A-Za-z]{38}")
KEY_SHAPE = "up_live_ or up_test_ followed by 38 letters and digits"

KeyProblem = Literal["malformed", "bad_checksum"]


def key_checksum(random_part: str) -> str:
    """The last six characters of a key: the CRC-32 of its random part, in base 62."""
    number, digits = zlib.crc32(random_part.encode("ascii")), []
    while number:
        number, remainder = divmod(number, 62)
        digits.append(KEY_ALPHABET[remainder])
    return "".join(reversed(digits)).rjust(KEY_CHECKSUM_LENGTH, "0")


def key_problem(candidate: object) -> KeyProblem | None:
    """What is wrong with a candidate key's shape or checksum, or None; no I/O."""
    if not isinstance(candidate, str) or not KEY_PATTERN.fullmatch(candidate):
        return "malformed"
    body = candidate.split("_", 2)[2]
    random_part, given_checksum = body[:KEY_RANDOM_LENGTH], body[KEY_RANDOM_LENGTH:]
    if not hmac.compare_digest(key_checksum(random_part), given_checksum):
        return "bad_checksum"
    return None


def key_display_form(key: str) -> str:
    """A recognisable, non-secret form such as ``up_live_AbCd...wxyz`` for tables and logs."""
    prefix_length = len(KEY_PREFIX) + 5  # "up_" + "live_" / "test_"
    return f"{key[: prefix_length + 4]}...{key[-4:]}"


_INGESTION_QUEUE_OF = {lane: queue for queue in INGESTION_QUEUES for lane in lane_queues(queue)}
