"""Single calls of one key and one sentAt that arrive together travel as one envelope, every
envelope of a window leaves in one publish, and each caller learns what happened to the envelope
that carried its events."""

from __future__ import annotations

import asyncio

from userpath_worker.edge.app import Coalescer
from userpath_worker.edge.service import Group


class BrokerDown(Exception):
    pass


def test_calls_arriving_together_share_one_envelope_per_key_and_sent_at_and_one_publish() -> None:
    published: list[list[Group]] = []

    async def publish(groups: list[Group]) -> list[Exception | None]:
        published.append([(key, sent_at, list(events)) for key, sent_at, events in groups])
        return [None] * len(groups)

    async def scenario() -> None:
        coalescer = Coalescer(publish)
        await asyncio.gather(
            coalescer.send("key-a", "t1", [b"1"]),
            coalescer.send("key-a", "t1", [b"2", b"3"]),
            coalescer.send("key-a", "t2", [b"4"]),
            coalescer.send("key-b", "t1", [b"5"]),
            coalescer.send("key-a", "t1", []),  # nothing to send: answered at once
        )
        await coalescer.send("key-a", "t1", [b"6"])  # after the window: a publish of its own

    asyncio.run(scenario())
    assert [sorted(groups) for groups in published] == [
        [("key-a", "t1", [b"1", b"2", b"3"]), ("key-a", "t2", [b"4"]), ("key-b", "t1", [b"5"])],
        [("key-a", "t1", [b"6"])],
    ]


def test_every_caller_of_an_envelope_the_broker_refused_learns_it_and_only_they_do() -> None:
    async def publish(groups: list[Group]) -> list[Exception | None]:
        return [BrokerDown(key) if key == "key-a" else None for key, _, _ in groups]

    async def scenario() -> list[object]:
        coalescer = Coalescer(publish)
        return await asyncio.gather(
            coalescer.send("key-a", None, [b"1"]),
            coalescer.send("key-a", None, [b"2"]),
            coalescer.send("key-b", None, [b"3"]),
            return_exceptions=True,
        )

    outcomes = asyncio.run(scenario())
    assert [type(outcome) for outcome in outcomes] == [BrokerDown, BrokerDown, type(None)]


def test_a_publish_that_fails_whole_fails_every_caller_of_the_window() -> None:
    async def publish(groups: list[Group]) -> list[Exception | None]:
        raise BrokerDown("down")

    async def scenario() -> list[object]:
        coalescer = Coalescer(publish)
        return await asyncio.gather(
            coalescer.send("key-a", "t1", [b"1"]), coalescer.send("key-b", "t2", [b"2"]), return_exceptions=True
        )

    outcomes = asyncio.run(scenario())
    assert [type(outcome) for outcome in outcomes] == [BrokerDown, BrokerDown]


def test_a_full_envelope_leaves_before_the_window_ends() -> None:
    sizes: list[int] = []

    async def publish(groups: list[Group]) -> list[Exception | None]:
        sizes.extend(len(events) for _, _, events in groups)
        return [None] * len(groups)

    async def scenario() -> None:
        coalescer = Coalescer(publish)
        await asyncio.gather(*(coalescer.send("key", None, [b"e"] * 400) for _ in range(3)))

    asyncio.run(scenario())
    assert sizes == [1200]  # closed when it reached 1,000 events; the publisher cuts it into envelopes
