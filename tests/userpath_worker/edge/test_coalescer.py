"""Single calls of one key and one sentAt that arrive together travel as one envelope, every
envelope of a turn of the event loop leaves in one publish, what arrives while a publish is under
way leaves with the next, and each caller learns what happened to the envelope that carried its
events."""

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
        await coalescer.send("key-a", "t1", [b"6"])  # later: a publish of its own

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


def test_what_arrives_during_a_publish_leaves_with_the_next_unless_there_is_too_much() -> None:
    sizes: list[list[int]] = []
    release = asyncio.Event()

    async def publish(groups: list[Group]) -> list[Exception | None]:
        sizes.append([len(events) for _, _, events in groups])
        await release.wait()
        return [None] * len(groups)

    async def scenario() -> None:
        coalescer = Coalescer(publish)
        first = asyncio.ensure_future(coalescer.send("key", "t0", [b"e"]))
        await asyncio.sleep(0.01)  # the first publish is under way
        meanwhile = [asyncio.ensure_future(coalescer.send("key", "t1", [b"e"] * 400)) for _ in range(3)]
        await asyncio.sleep(0.01)
        assert sizes == [[1]]  # they wait for it
        flood = [asyncio.ensure_future(coalescer.send("other", "t1", [b"e"] * 1000)) for _ in range(3)]
        await asyncio.sleep(0.01)
        assert sizes == [[1], [1200, 3000]]  # 4,000 events waiting: they left at once
        release.set()
        await asyncio.gather(first, *meanwhile, *flood)

    asyncio.run(scenario())
