"""Batches on Redis: one Lua call takes many messages from a queue's lists, one call
acknowledges them, one call restores those a dead worker held.

Messages taken are held, until acknowledged, in a hash and an index of the step's own
(``userpath.unacked``, ``userpath.unacked_index``), not in kombu's: kombu parses every entry
of its own when it restores, so one item that is not JSON would stop it restoring anything
older, and it restores only on channels that consume a queue, which the step's are not. The
step restores what is older than ``USERPATH_VISIBILITY_TIMEOUT`` itself, entry by entry, in
one atomic call that parses nothing.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import orjson
import redis

from tasks.ingestion.decoder import Oversized, Transported, invalid_message, refused, undecodable
from userpath_client.contract import LANE_INFIX, READY_SUFFIX, ready_lanes
from userpath_worker.deadletter.models import Reason
from userpath_worker.events.services import Refused

NAME = "redis"
UNACKED, UNACKED_INDEX, TAG_COUNTER = "userpath.unacked", "userpath.unacked_index", "userpath.batch_tags"
# kombu's Redis transport keeps each priority in a list of its own (the contract says 0).
_PRIORITY_SEPARATOR, _PRIORITIES = "\x06\x16", (3, 6, 9)
RESTORE_AT_ONCE = 1000  # entries one restore call moves at most
QUANTUM = 10  # messages a lane gives in its turn; a slow lane gives one

# Moves up to ARGV[1] messages (and about ARGV[2] bytes) from the queue's lanes into the unacked
# hash and index, under tags "<number>|<queue>|<lane>" (a lane: any text a producer listed).
# Returns the tags: the pool process that handles the batch reads the messages by them, so they
# never pass through the worker's main process, nor through the pool's arguments, which Celery
# logs at DEBUG.
#
# Fairness: the lanes listed in the ready set (KEYS[4]) are taken in turn, ARGV[5] messages from
# the one at the front (1 from a slow lane, ARGV[6..]), which then goes to the back of the line,
# or leaves it once empty; the queue's own lists (producers that know no lanes, KEYS[5..]) have a
# turn between any two lanes'. So a message of a quiet key waits for one turn of each busy lane,
# never behind a busy lane's backlog. A lane alone (no other lane, the queue's own lists empty)
# gives all the batch wants: nobody waits behind it within this call, which is atomic. Each round
# takes a message or retires a lane or list: it ends.
_TAKE = (
    """
local limit, max_bytes, quantum = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[5])
local slow = {}
for i = 6, #ARGV do slow[ARGV[i]] = true end
local taken, size = {}, 0
local function take(list, lane, count)
  local got = 0
  while got < count and #taken < limit and size < max_bytes do
    local message = redis.call('RPOP', list)
    if not message then return got, true end
    local tag = redis.call('INCR', KEYS[3]) .. '|' .. ARGV[4] .. '|' .. lane
    redis.call('HSET', KEYS[1], tag, message)
    redis.call('ZADD', KEYS[2], ARGV[3], tag)
    taken[#taken + 1] = tag
    size = size + #message
    got = got + 1
  end
  return got, false
end
local plain = {}  -- the queue's own lists not yet found empty by this call
for i = 5, #KEYS do plain[#plain + 1] = KEYS[i] end
local back  -- the score at the back of the line, read once
while #taken < limit and size < max_bytes do
  local moved, i = 0, 1
  while i <= #plain do
    local got, emptied = take(plain[i], '', quantum - moved)
    moved = moved + got
    if emptied then table.remove(plain, i) elseif moved >= quantum then break else i = i + 1 end
  end
  local line = redis.call('ZRANGE', KEYS[4], 0, 1, 'WITHSCORES')
  local front = line[1]
  if front then
    local alone = line[3] == nil and #plain == 0 and not slow[front]
    local got, emptied = take(ARGV[4] .. '"""
    + LANE_INFIX
    + """' .. front, front, alone and limit or (slow[front] and 1 or quantum))
    moved = moved + got
    if emptied then
      redis.call('ZREM', KEYS[4], front)
    else  -- to the back of the line, behind any lane that arrives later (they join at 0)
      if not back then
        back = alone and tonumber(line[2]) or tonumber(redis.call('ZRANGE', KEYS[4], -1, -1, 'WITHSCORES')[2])
      end
      back = back + 1
      redis.call('ZADD', KEYS[4], back, front)
    end
  elseif moved == 0 then
    break
  end
end
return taken
"""
)
# Puts the messages of ``tags`` back at the consuming end of their lanes (listed again at the
# front of the line) or queues, and forgets them. "<number>|<queue>": a tag of an earlier worker.
_PUT_BACK = (
    """
for i = #tags, 1, -1 do
  local tag = tags[i]
  local message = redis.call('HGET', KEYS[1], tag)
  local queue, lane = string.match(tag, '^%d+|([^|]+)|(.*)$')
  if not queue then queue = string.match(tag, '^%d+|(.+)$') end
  if message and queue then
    if lane and lane ~= '' then
      redis.call('RPUSH', queue .. '"""
    + LANE_INFIX
    + """' .. lane, message)
      redis.call('ZADD', queue .. '"""
    + READY_SUFFIX
    + """', 'NX', 0, lane)
    else
      redis.call('RPUSH', queue, message)
    end
  end
  redis.call('HDEL', KEYS[1], tag)
  redis.call('ZREM', KEYS[2], tag)
end
return #tags
"""
)
_GIVE_BACK = "local tags = ARGV\n" + _PUT_BACK  # ARGV: the tags
# ARGV: a time and a count: up to that many tags taken before that time (a dead worker's).
_RESTORE = "local tags = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])\n" + _PUT_BACK


@dataclass(frozen=True, slots=True)
class Taken:
    """A batch as a transport took it: what settles it, and what the pool job gets."""

    tags: list[Any]
    items: list[Any]  # Redis: the tags again, handles the pool reads the messages by


class RedisBatches:
    """kombu's Redis queues, a batch at a time."""

    name = NAME

    def __init__(self, client: redis.Redis, queues: Sequence[str] = (), lanes_only: bool = False) -> None:
        self.client, self.queues, self.next_queue = client, list(queues), 0
        # True when Celery's own consumer takes the queues' own lists (USERPATH_INGEST_BATCH_MESSAGES=1)
        self.lanes_only = lanes_only
        self.slow_lanes: frozenset[str] = frozenset()  # the lanes of USERPATH_SLOW_KEYS, as learnt
        self._take = client.register_script(_TAKE)
        self._give_back = client.register_script(_GIVE_BACK)
        self._restore = client.register_script(_RESTORE)

    def take(self, queue: str, messages: int, max_bytes: int) -> Taken:
        """Up to ``messages`` messages (and about ``max_bytes``): each lane's oldest first, the lanes in turn."""
        lists = [] if self.lanes_only else [queue, *(f"{queue}{_PRIORITY_SEPARATOR}{p}" for p in _PRIORITIES)]
        tags = self._take(
            keys=[UNACKED, UNACKED_INDEX, TAG_COUNTER, ready_lanes(queue), *lists],
            args=[messages, max_bytes, time.time(), queue, QUANTUM, *self.slow_lanes],
        )
        return Taken(tags, tags)

    def next_batch(self, messages: int, max_bytes: int) -> Taken | None:
        """A batch from the next queue that has messages, the queues taken in turn."""
        for offset in range(len(self.queues)):
            queue = self.queues[(self.next_queue + offset) % len(self.queues)]
            taken = self.take(queue, messages, max_bytes)
            if taken.tags:
                self.next_queue = (self.next_queue + offset + 1) % len(self.queues)
                return taken
        return None

    def acknowledge(self, tags: Sequence[bytes]) -> None:
        if tags:
            self.client.pipeline(transaction=False).hdel(UNACKED, *tags).zrem(UNACKED_INDEX, *tags).execute()

    def give_back(self, tags: Sequence[bytes]) -> None:
        """Put the messages back where the next take finds them first."""
        if tags:
            self._give_back(keys=[UNACKED, UNACKED_INDEX], args=list(tags))

    forget = give_back  # a batch this worker will not settle goes back to its queue

    def close(self) -> None:
        self.client.close()

    def restore_older_than(self, seconds: float) -> int:
        """Give back what was taken more than ``seconds`` ago: a worker that died held it."""
        return int(self._restore(keys=[UNACKED, UNACKED_INDEX], args=[time.time() - seconds, RESTORE_AT_ONCE]))


def held(client: redis.Redis, tags: Sequence[bytes]) -> list[tuple[str, bytes]]:
    """In a pool process: the messages of ``tags`` as (queue, message). One that is no longer held
    (restored after the visibility timeout, and taken by another worker) is left out."""
    return [
        (tag.decode().split("|", 2)[1], message)
        for tag, message in zip(tags, client.hmget(UNACKED, list(tags)), strict=True)
        if message is not None
    ]


def transported(item: tuple[str, bytes]) -> Transported | Refused:
    """A list item in kombu's Redis form (docs/contract.md, "(a) Redis"), unwrapped."""
    queue, raw = item
    oversized = Oversized.of(raw)
    if oversized is not None:
        return oversized.refused(queue)
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        document = None
    properties = document.get("properties") if isinstance(document, dict) else None
    if not isinstance(document, dict) or not isinstance(properties, dict):
        # Nothing of it is kept: a key inside may be base64-encoded, out of the scrubber's sight.
        odd = Transported(None, raw, None, None, queue)
        return refused(odd, *invalid_message("not a message in kombu's Redis form"), keep_body=False)
    message = Transported(
        document.get("headers"),
        document.get("body"),
        document.get("content-type"),
        document.get("content-encoding"),
        queue,
    )
    encoding = properties.get("body_encoding")
    if encoding is None:
        return message
    if encoding != "base64":
        # Not kept: what an unknown encoding hides, the scrubber cannot see.
        detail = f"body encoding {str(encoding)[:50]!r} is refused; send base64"
        return refused(message, Reason.UNDECODABLE, detail, keep_body=False)
    if not isinstance(message.body, str):
        return refused(message, *invalid_message(f"a base64 body must be text, not a {type(message.body).__name__}"))
    try:
        body = base64.b64decode(message.body, validate=True)
        return Transported(message.headers, body, message.content_type, message.content_encoding, queue)
    except (binascii.Error, ValueError) as error:
        # Kept only as far as a lenient decoding reveals it, so that the key in it is scrubbed.
        try:
            revealed = replace(message, body=base64.b64decode(message.body))
        except (binascii.Error, ValueError):
            return refused(message, *undecodable(error), keep_body=False)
        return refused(revealed, Reason.UNDECODABLE, "the body is not valid base64 (line breaks or other characters)")
