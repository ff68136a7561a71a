"""Who a lane belongs to (contract "lanes"), for operators: a lane is named by a hash of its key,
so the broker alone cannot say whose backlog it holds. Workers on Redis record each lane's
organization and key as they store its messages, in one hash beside the queues; ``userpath status``
sums the waiting messages per organization from it, and the worker finds the lanes of the keys
an operator forced into the slow lane (``USERPATH_SLOW_KEYS``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import redis

from userpath_client.contract import INGESTION_QUEUES, lane_list, ready_lanes

LANE_OWNERS = "userpath.lane_owners"  # lane -> "<org id>:<key id>"


@dataclass(frozen=True)
class Owner:
    org_id: int
    key_id: int

    def encoded(self) -> str:
        return f"{self.org_id}:{self.key_id}"


def record_owners(client: redis.Redis, owners: Mapping[str, Owner]) -> None:
    if owners:
        client.hset(LANE_OWNERS, mapping={lane: owner.encoded() for lane, owner in owners.items()})


def lane_owners(client: redis.Redis) -> dict[str, Owner]:
    owners = {}
    for lane, value in client.hgetall(LANE_OWNERS).items():
        org_id, _, key_id = value.decode().partition(":")
        if org_id.isdigit() and key_id.isdigit():
            owners[lane.decode()] = Owner(int(org_id), int(key_id))
    return owners


def lanes_of_keys(client: redis.Redis, key_ids: Iterable[int]) -> dict[str, int]:
    """The lanes (seen so far) of ``key_ids``, each with its key id."""
    wanted = set(key_ids)
    if not wanted:
        return {}
    return {lane: owner.key_id for lane, owner in lane_owners(client).items() if owner.key_id in wanted}


def waiting_in_lanes(client: redis.Redis) -> list[tuple[str, str, int]]:
    """(queue, lane, messages waiting) of every lane listed in a ready set."""
    listed = [(queue, lane.decode()) for queue in INGESTION_QUEUES for lane in client.zrange(ready_lanes(queue), 0, -1)]
    pipeline = client.pipeline(transaction=False)
    for queue, lane in listed:
        pipeline.llen(lane_list(queue, lane))
    waiting = pipeline.execute() if listed else []
    return [(queue, lane, count) for (queue, lane), count in zip(listed, waiting, strict=True)]


def backlog_by_organization(client: redis.Redis, waiting: Iterable[tuple[str, str, int]]) -> Counter[int | None]:
    """Messages waiting in lanes, per organization (None: lanes no worker has stored from yet)."""
    owners = lane_owners(client)
    backlog: Counter[int | None] = Counter()
    for _, lane, count in waiting:
        owner = owners.get(lane)
        backlog[owner.org_id if owner else None] += count
    return backlog
