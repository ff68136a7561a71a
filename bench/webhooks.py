"""``python -m bench.webhooks [--webhooks 100000] [--rounds 3] [--broker redis|rabbitmq]``: the
webhook drain without and with verification, alternated (A B B A ...) so that load from other work
on the machine falls on both alike; each round's share and the median, and the in-process cost of
one check.

The same drains as ``python -m bench`` (its database, brokers and worker): an organization without
a secret, then one whose Stripe webhooks must verify, each delivery signed as Stripe signs.
"""

from __future__ import annotations

import argparse
import statistics

from bench import harness, scenarios
from bench.brokers import BROKERS
from bench.scenarios import verification_cost


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.webhooks", description=__doc__)
    parser.add_argument("--webhooks", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--broker", choices=BROKERS, default="redis")
    parser.add_argument("--concurrency", type=int, default=4)
    options = parser.parse_args()
    broker = BROKERS[options.broker]
    print(f"load average before: {harness.load_average()}")
    engine = harness.fresh_database()
    try:
        keys = {
            "webhooks": harness.new_key(engine),
            "webhooks_verified": harness.new_key(engine, stripe_secret=harness.STRIPE_SECRET),
        }
        shares = []
        for number in range(options.rounds):
            order = ["webhooks", "webhooks_verified"][:: 1 if number % 2 == 0 else -1]
            rates = {
                kind: scenarios.drain(engine, keys[kind], broker, kind, options.webhooks, options.concurrency)[
                    "events_per_second"
                ]
                for kind in order
            }
            shares.append(rates["webhooks_verified"] / rates["webhooks"])
            print(
                f"round {number + 1} ({' then '.join(order)}): without {rates['webhooks']:,.0f}/s, "
                f"verified {rates['webhooks_verified']:,.0f}/s, {shares[-1]:.0%}"
            )
    finally:
        engine.dispose()
    cost = verification_cost(100_000)
    print(
        f"median verified / unverified on {broker.label}: {statistics.median(shares):.0%} (target 90%); "
        f"one Stripe check {cost['check_us']:.1f} µs; a webhook's verdict {cost['verdict_us']:.1f} µs verified, "
        f"{cost['verdict_us_unverified']:.1f} µs without a secret"
    )
    print(f"load average after: {harness.load_average()}")


if __name__ == "__main__":
    main()
