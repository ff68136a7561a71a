"""Segment's calls as the contract's events: every call type kept, each event judged by the
contract's own rules, refusals listed by index and reason."""

from __future__ import annotations

import json

import pytest

from userpath_worker.edge.segment import UnusableBody, judge, sent_at

WHEN = "2026-12-05T07:00:00+00:00"


def events(calls: list[object], route_type: str | None = None, **defaults: object) -> list[dict[str, object]]:
    return [json.loads(event) for event in judge(calls, route_type, defaults).accepted]


def test_every_call_type_is_an_event_with_what_the_call_says() -> None:
    calls = [
        {"type": "track", "event": "Signed Up", "userId": "u1", "properties": {"plan": "pro"}, "messageId": "m1"},
        {"type": "identify", "userId": "u1", "traits": {"email": "u1@example.com"}},
        {"type": "page", "anonymousId": "a1", "name": "Home", "category": "Docs", "properties": {"path": "/"}},
        {"type": "screen", "userId": "u1", "name": "Settings"},
        {"type": "group", "userId": "u1", "groupId": "g1", "traits": {"plan": "team"}},
        {"type": "alias", "userId": "u1", "previousId": "a1"},
    ]
    stored = events([{**call, "timestamp": WHEN} for call in calls])
    assert [(event["event"], event["properties"]) for event in stored] == [
        ("Signed Up", {"plan": "pro"}),
        ("$identify", {"email": "u1@example.com"}),
        ("$page", {"path": "/", "name": "Home", "category": "Docs"}),
        ("$screen", {"name": "Settings"}),
        ("$group", {"group_id": "g1", "traits": {"plan": "team"}}),
        ("$alias", {"previous_id": "a1"}),
    ]
    assert stored[0]["event_id"] == "m1"
    assert stored[2]["anonymous_id"] == "a1"


def test_times_context_and_numeric_ids_map_onto_the_contract() -> None:
    (original, plain, untimed) = events(
        [
            {"event": "A", "userId": 7, "originalTimestamp": "2026-12-05T06:00:00Z", "timestamp": WHEN},
            {"event": "B", "userId": "u", "timestamp": WHEN, "context": {"ip": "203.0.113.9"}},
            {"event": "C", "userId": "u"},
        ],
        "track",
        context={"library": {"name": "curl"}},
        timestamp="2026-12-05T07:00:05+00:00",
    )
    assert (original["user_id"], original["timestamp"]) == ("7", "2026-12-05T06:00:00+00:00")
    assert original["context"] == {"library": {"name": "curl"}}  # the batch's context, when the call has none
    assert plain["context"] == {"ip": "203.0.113.9"}
    assert untimed["timestamp"] == "2026-12-05T07:00:05+00:00"  # the caller's sentAt, its own clock


def test_refused_calls_are_listed_by_index_and_sent_on_to_be_dead_lettered() -> None:
    judged = judge(
        [
            {"type": "track", "event": "Fine", "userId": "u", "timestamp": WHEN},
            "not a call",
            {"type": "delete", "userId": "u"},
            {"type": "track", "userId": "u", "timestamp": WHEN},
            {"type": "track", "event": "Huge", "userId": "u", "timestamp": WHEN, "properties": {"x": "y" * 40_000}},
        ],
        None,
        {},
    )
    assert len(judged.accepted) == 1
    assert [refusal["index"] for refusal in judged.refusals] == [1, 2, 3, 4]
    assert "type: one of track" in judged.refusals[1]["reason"]
    assert "event" in judged.refusals[2]["reason"]
    assert "the limit is 32768" in judged.refusals[3]["reason"]
    # What the worker can read goes on, so that the owner finds it among the dead letters.
    assert [json.loads(event).get("event") for event in judged.refused] == [None, "Huge"]


def test_sent_at_needs_an_offset() -> None:
    assert sent_at({"sentAt": "2026-12-05T07:00:00.5Z"}) == "2026-12-05T07:00:00.500000+00:00"
    assert sent_at({}) is None
    with pytest.raises(UnusableBody, match="sentAt"):
        sent_at({"sentAt": "2026-12-05 07:00"})
