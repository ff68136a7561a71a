"""Track requests read together are judged in one hop to the thread pool, each gets its own
decision (or its own error), and at most ``Judges.IN_FLIGHT`` batches are judged at once."""

from __future__ import annotations

import asyncio

from userpath_worker.edge.app import Judges
from userpath_worker.edge.http import Answer, refusal
from userpath_worker.edge.service import Accepted, Call


def test_requests_read_together_are_judged_in_one_batch_each_with_its_own_decision_or_error() -> None:
    batches: list[list[object]] = []

    async def judge_all(calls: list[Call]) -> list[Accepted | Answer | Exception]:
        batches.append([key for key, _, _ in calls])
        return [ValueError(key) if key == "broken" else refusal(401, "unknown_key", str(key)) for key, _, _ in calls]

    async def scenario() -> list[object]:
        judges = Judges(judge_all)
        together = await asyncio.gather(
            *(judges.judge((key, {}, "track")) for key in ("a", "broken", "c")), return_exceptions=True
        )
        alone = await judges.judge(("d", {}, None))
        return [*together, alone]

    outcomes = asyncio.run(scenario())
    assert batches == [["a", "broken", "c"], ["d"]]
    assert [type(outcome) for outcome in outcomes] == [Answer, ValueError, Answer, Answer]
    assert [outcome.document["message"] for outcome in outcomes if isinstance(outcome, Answer)] == ["a", "c", "d"]


def test_requests_arriving_while_batches_are_judged_wait_and_go_together() -> None:
    batches: list[list[object]] = []
    release = asyncio.Event()

    async def judge_all(calls: list[Call]) -> list[Accepted | Answer | Exception]:
        batches.append([key for key, _, _ in calls])
        await release.wait()
        return [refusal(401, "unknown_key", str(key)) for key, _, _ in calls]

    async def scenario() -> None:
        judges = Judges(judge_all)
        first = [asyncio.ensure_future(judges.judge((key, {}, "track"))) for key in ("a", "b")]
        await asyncio.sleep(0.01)
        second = [asyncio.ensure_future(judges.judge((key, {}, "track"))) for key in ("c", "d")]
        await asyncio.sleep(0.01)
        assert len(batches) == Judges.IN_FLIGHT
        later = [asyncio.ensure_future(judges.judge((key, {}, "track"))) for key in ("e", "f", "g")]
        await asyncio.sleep(0.01)
        assert len(batches) == Judges.IN_FLIGHT  # e, f and g wait for a batch to end
        release.set()
        await asyncio.gather(*first, *second, *later)

    asyncio.run(scenario())
    assert batches == [["a", "b"], ["c", "d"], ["e", "f", "g"]]
