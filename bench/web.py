"""``python -m bench.web [--keys 1000] [--requests 300] [--database sqlite|postgresql|both]``: the
Settings → API Keys page of an organization with 1,000 keys, a failed sign-in for a known and an
unknown e-mail, and one password hash.

In-process, as the HTTP tests run the pages (Flask's test client, no sockets): the server time of
each request for the page, signed in as its owner, from the request reaching the app to its last
byte, after a warm-up and the ``gc.freeze()`` that ``userpath web`` does before it serves; p50 and
p95 against a target p95 of 50 ms. The keys are varied as in a real organization: some used, some
<<<<<<< HEAD
flagged for rotation, some rolled and expiring, some expiring, a few deleted. The password hash is
argon2id with the parameters of accounts.passwords (OWASP's), timed alone. The failed sign-ins
alternate a member's e-mail and an unknown one, each from an address of its own (the throttle
refuses neither), and compare their medians: the answer must not tell whether an e-mail is known.
=======
flagged for rotation, some rolled and expiring, some expiring, a few deleted, two thirds limited
to some scopes. The password hash is argon2id with the parameters of accounts.passwords (OWASP's),
timed alone.
>>>>>>> main

SQLite is a file in a temporary folder; PostgreSQL is database ``userpath_bench_web`` on
127.0.0.1, re-created each run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import os
import platform
import re
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, text, update
from sqlalchemy.orm import Session

from bench.harness import KEY_PEPPER
from config.settings import Settings
from userpath_worker import schema
from userpath_worker.accounts import passwords
from userpath_worker.accounts import services as accounts
from userpath_worker.db import make_engine, utcnow
from userpath_worker.keys.models import ApiKey
from userpath_worker.keys.services import KeyService
from userpath_worker.keys.tokens import Environment
from userpath_worker.organizations.models import Organization, Role
from userpath_worker.organizations.services import create_organization
from userpath_worker.web.app import create_app

POSTGRES_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"
POSTGRES_DATABASE = "userpath_bench_web"
BASE_URL = "http://127.0.0.1:8000"
OWNER = "owner@bench.example"
PASSWORD = "bench password, long enough"
TARGET_P95_MS = 50.0
# A third of the keys may send everything, a third one source, a third a source and a provider's webhooks.
SCOPES = (None, frozenset({"track"}), frozenset({"jobs", "webhooks:stripe"}))


@contextmanager
def database(kind: str) -> Iterator[Engine]:
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as folder:
            engine = make_engine(f"sqlite:///{Path(folder) / 'userpath.db'}", hide_parameters=True)
            schema.upgrade(engine)
            yield engine
            engine.dispose()
        return
    admin = create_engine(f"{POSTGRES_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{POSTGRES_DATABASE}" WITH (FORCE)'))
        connection.execute(text(f'CREATE DATABASE "{POSTGRES_DATABASE}"'))
    admin.dispose()
    engine = make_engine(f"{POSTGRES_SERVER}/{POSTGRES_DATABASE}", hide_parameters=True)
    schema.upgrade(engine)
    yield engine
    engine.dispose()


def populate(engine: Engine, count: int) -> int:
    """An organization with its owner (password set) and ``count`` keys listed on the page; its id."""
    now = utcnow()
    with Session(engine) as session, session.begin():
        organization = create_organization(session, "Bench", OWNER)
        accounts.accept_invitation(session, accounts.invite(session, organization, OWNER, Role.OWNER, OWNER), PASSWORD)
        service = KeyService(session, KEY_PEPPER)
        ids = []
        for n in range(count):
            environment = Environment.TEST if n % 4 == 0 else Environment.LIVE
            lifetime = dt.timedelta(days=90) if n % 5 == 0 else None
            key, _ = service.create(organization, f"Server {n:04d}", OWNER, environment, lifetime, SCOPES[n % 3])
            ids.append(key.id)
        used = [key_id for n, key_id in enumerate(ids) if n % 2 == 0]
        session.execute(update(ApiKey).where(ApiKey.id.in_(used)).values(last_used_at=now - dt.timedelta(hours=5)))
        flagged = [key_id for n, key_id in enumerate(ids) if n % 7 == 0]
        session.execute(
            update(ApiKey)
            .where(ApiKey.id.in_(flagged))
            .values(flagged_at=now, flag_reasons=["too_old", "unused"], created_at=now - dt.timedelta(days=120))
        )
        # Rolled keys (each replaced by a new one, also listed) and deleted ones (not listed).
        for key_id in ids[1::50]:
            service.roll(key_id, OWNER, dt.timedelta(hours=24))
        for key_id in ids[3::100]:
            service.delete(key_id, OWNER)
        return organization.id


def time_page(engine: Engine, org_id: int, requests: int) -> tuple[list[float], int, int]:
    """Server time (ms) of each GET of the keys page; the rows it listed and its size in bytes."""
    settings = Settings(
        database_url=str(engine.url),
        web_secret="bench-web-secret-0123456789",
        web_base_url=BASE_URL,
        key_pepper=KEY_PEPPER,
    )
    app = create_app(settings, engine)
    client = app.test_client()
    page = client.get("/sign-in").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    signed_in = client.post(
        "/sign-in", data={"csrf_token": token, "email": OWNER, "password": PASSWORD}, headers={"Origin": BASE_URL}
    )
    assert signed_in.status_code == 302, signed_in.get_data(as_text=True)
    path = f"/orgs/{org_id}/settings/api-keys"
    for _ in range(20):  # warm-up: connections, template compilation
        client.get(path)
    gc.collect()
    gc.freeze()  # as `userpath web` does before it serves
    times = []
    body = b""
    for _ in range(requests):
        started = time.perf_counter()
        response = client.get(path)
        body = response.get_data()
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200
    return times, body.count(b"data-key-id="), len(body)


def time_failed_sign_ins(engine: Engine, org_id: int, rounds: int) -> tuple[list[float], list[float]]:
    """Server time (ms) of a wrong password for a member's e-mail and for an unknown one, alternated."""
    settings = Settings(
        database_url=str(engine.url),
        web_secret="bench-web-secret-0123456789",
        web_base_url=BASE_URL,
        key_pepper=KEY_PEPPER,
    )
    members = [f"member{n}@bench.example" for n in range(rounds // (accounts.MAX_ACCOUNT_FAILURES - 1) + 1)]
    with Session(engine) as session, session.begin():
        organization = session.get_one(Organization, org_id)
        for email in members:
            accounts.accept_invitation(
                session, accounts.invite(session, organization, email, Role.MEMBER, OWNER), PASSWORD
            )
    client = create_app(settings, engine).test_client()
    page = client.get("/sign-in").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    known: list[float] = []
    unknown: list[float] = []
    for n in range(rounds):
        # Fewer failures an e-mail than close it to new browsers: every one is checked.
        member = members[n // (accounts.MAX_ACCOUNT_FAILURES - 1)]
        for email, times in ((member, known), (f"nobody{n}@bench.example", unknown))[:: 1 if n % 2 else -1]:
            form = {"csrf_token": token, "email": email, "password": "not the password at all"}
            started = time.perf_counter()
            response = client.post(
                "/sign-in",
                data=form,
                headers={"Origin": BASE_URL},
                environ_base={"REMOTE_ADDR": f"10.0.{n // 250}.{n % 250}"},
            )
            times.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 401, response.status_code
    return known, unknown


def hash_time() -> float:
    passwords.hash_password("warm up the hasher")
    started = time.perf_counter()
    passwords.hash_password("correct horse battery staple")
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.web", description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--database", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--sign-ins", type=int, default=100, help="failed sign-ins of each kind")
    options = parser.parse_args()
    kinds = ["sqlite", "postgresql"] if options.database == "both" else [options.database]
    print(
        f"python {platform.python_version()} on {platform.machine()} ({os.cpu_count()} CPUs), "
        f"{options.requests} requests a database; load average {os.getloadavg()[0]:.2f} before"
    )
    columns = ("min ms", "p50 ms", "p95 ms", "max ms")
    print(f"{'database':<11} {'rows':>5} {'KiB':>5} " + " ".join(f"{c:>7}" for c in columns) + "  target p95 < 50 ms")
    for kind in kinds:
        with database(kind) as engine:
            org_id = populate(engine, options.keys)
            times, rows, size = time_page(engine, org_id, options.requests)
        p50 = statistics.median(times)
        p95 = statistics.quantiles(times, n=20)[-1]
        verdict = "met" if p95 < TARGET_P95_MS else "MISSED"
        print(
            f"{kind:<11} {rows:>5} {size / 1024:>5.0f} {min(times):>7.1f} {p50:>7.1f} {p95:>7.1f} {max(times):>7.1f}  "
            f"{verdict}"
        )
    with database(kinds[0]) as engine:
        known, unknown = time_failed_sign_ins(engine, populate(engine, 1), options.sign_ins)
    known_p50, unknown_p50 = statistics.median(known), statistics.median(unknown)
    print(
        f"a wrong password on {kinds[0]}, {options.sign_ins} each: member's e-mail p50 {known_p50:.1f} ms, "
        f"unknown e-mail p50 {unknown_p50:.1f} ms, difference {known_p50 - unknown_p50:+.1f} ms"
    )
    memory = passwords.HASHER.memory_cost // 1024
    print(f"one password hash (argon2id, m={memory} MiB, t={passwords.HASHER.time_cost}): {hash_time():.1f} ms")
    print(f"load average {os.getloadavg()[0]:.2f} after")


if __name__ == "__main__":
    main()
