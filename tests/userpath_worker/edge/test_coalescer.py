"""Single calls of one key and one sentAt that arrive together travel as one envelope, and each
caller learns what happened to the envelope that carried its events."""

from __future__ import annotations

import asyncio

from userpath_worker.edge.app import Coalescer


class BrokerDown(Exception):
    pass


def test_calls_arriving_together_share_one_publish_per_key_and_sent_at() -> None:
    published: list[tuple[str, list[bytes], str | None]] = []

    async def publish(key: str, events: list[bytes], sent_at: str | None) -> None:
        published.append((key, list(events), sent_at))

    async def scenario() -> None:
        coalescer = Coalescer(publish)
        await asyncio.gather(
            coalescer.send("key-a", "t1", [b"1"]),
            coalescer.send("key-a", "t1", [b"2", b"3"]),
            coalescer.send("key-a", "t2", [b"4"]),
            coalescer.send("key-b", "t1", [b"5"]),
            coalescer.send("key-a", "t1", []),  # nothing to send: answered at once
        )
        await coalescer.send("key-a", "t1", [b"6"])  # after the window: an envelope of its own

    asyncio.run(scenario())
    assert sorted(published) == [
        ("key-a", [b"1", b"2", b"3"], "t1"),
        ("key-a", [b"4"], "t2"),
        ("key-a", [b"6"], "t1"),
        ("key-b", [b"5"], "t1"),
    ]


def test_every_caller_of_an_envelope_the_broker_refused_learns_it() -> None:
    async def publish(key: str, events: list[bytes], sent_at: str | None) -> None:
        raise BrokerDown(key)

    async def scenario() -> list[object]:
        coalescer = Coalescer(publish)
        return await asyncio.gather(
            coalescer.send("key-a", None, [b"1"]), coalescer.send("key-a", None, [b"2"]), return_exceptions=True
        )

    outcomes = asyncio.run(scenario())
    assert [type(outcome) for outcome in outcomes] == [BrokerDown, BrokerDown]


def test_a_full_envelope_leaves_before_the_window_ends() -> None:
    sizes: list[int] = []

    async def publish(key: str, events: list[bytes], sent_at: str | None) -> None:
        sizes.append(len(events))

    async def scenario() -> None:
        coalescer = Coalescer(publish)
        await asyncio.gather(*(coalescer.send("key", None, [b"e"] * 400) for _ in range(3)))

    asyncio.run(scenario())
    assert sizes == [1200]  # closed when it reached 1,000 events; the publisher cuts it into envelopes
