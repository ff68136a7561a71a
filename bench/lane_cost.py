"""``python -m bench.lane_cost [--rounds N] [--events N] [--kind envelopes_1|envelopes_100]``: the
uncontended cost of lanes on Redis (issue 22, item 2), measured in alternation so that the load of
a shared machine falls on every way alike.

Each round drains the same preloaded backlog of one key three ways: the worker before lanes
(``fairness.BEFORE_LANES``, a git worktree) from the queue's own list, as its producers pushed;
this checkout's worker from the queue's own list (producers that know no lanes); and this
checkout's worker from the key's lane, as the client publishes now. Prints each drain and the
medians' ratios to before.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Iterable

from bench import fairness, harness, scenarios
from bench.brokers import Redis
from bench.messages import TaskMessage
from userpath_client.contract import lane_list, lane_of, ready_lanes


class LanePreloaded(Redis):
    """Redis preloaded into one key's lane, listed in the ready set, as the client publishes."""

    def __init__(self, key: str) -> None:
        self.lane = lane_of(key)

    def preload(self, queue: str, messages: Iterable[TaskMessage], chunk: int = 1000) -> int:
        pushed = super().preload(queue, messages, chunk)
        client = self.client()
        client.rename(queue, lane_list(queue, self.lane))
        client.zadd(ready_lanes(queue), {self.lane: 0})
        return pushed

    def depth(self, queue: str) -> int:
        return int(self.client().llen(lane_list(queue, self.lane)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--kind", choices=("envelopes_1", "envelopes_100"), default="envelopes_1")
    parser.add_argument("--concurrency", type=int, default=4)
    options = parser.parse_args()
    engine = harness.fresh_database()
    try:
        key = harness.new_key(engine)
        ways = {
            f"before lanes ({fairness.BEFORE_LANES}), queue's list": (harness.checkout(fairness.BEFORE_LANES), Redis()),
            "this checkout, queue's list": (harness.REPOSITORY, Redis()),
            "this checkout, the key's lane": (harness.REPOSITORY, LanePreloaded(key)),
        }
        rates: dict[str, list[float]] = {name: [] for name in ways}
        print(f"load average before: {harness.load_average()}")
        for round_number in range(1, options.rounds + 1):
            for name, (tree, broker) in ways.items():
                figures = scenarios.drain(
                    engine, key, broker, options.kind, options.events, options.concurrency, None, tree
                )
                rate = figures["events_per_second"]
                rates[name].append(rate)
                print(f"round {round_number}  {name:<36} {rate:>9,.0f} events/s  load {harness.load_average()}")
    finally:
        engine.dispose()
    before = statistics.median(next(iter(rates.values())))
    for name, figures in rates.items():
        median = statistics.median(figures)
        print(f"median  {name:<36} {median:>9,.0f} events/s  {median / before:.1%} of before")


if __name__ == "__main__":
    main()
