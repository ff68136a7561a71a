"""``userpath demo``: the whole product in one command on the embedded default.

Creates a demo organization and key, starts a real worker process and a real HTTP edge (``userpath
edge``, on a free local port), sends server, job and webhook events plus a few bad messages through
the real broker with the producer client and Segment-style calls through the edge over HTTP, and
waits until every one of them is stored or dead-lettered. Each run's key replaces the previous
run's, so that the demo leaves one active key behind however often it runs; the CLI prints it once,
in a snippet that sends an event with it and a curl line that sends one through the edge. Ends with
a fresh one-time link for the demo's owner to set a password on the web pages (``userpath web``) and
see the keys there.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from celery import Celery
from sqlalchemy import func, select

from config.settings import Settings, get_settings
from userpath_client import UserPath
from userpath_client.contract import BROKER_URL_VARIABLE, EVENTS_QUEUE, TRACK_TASK
from userpath_worker import runtime, schema
from userpath_worker.accounts import services as accounts
from userpath_worker.db import utcnow
from userpath_worker.deadletter.models import DeadLetter
from userpath_worker.errors import NotFound, UserError
from userpath_worker.events.models import Event
from userpath_worker.events.schemas import summarize_arguments
from userpath_worker.keys import tokens
from userpath_worker.keys.services import KeyService, configured_pepper
from userpath_worker.keys.tokens import Environment
from userpath_worker.organizations import services as organizations
from userpath_worker.organizations.models import Role

DEMO_ORG = "Demo"
DEMO_OWNER = "owner@demo.example"
EDGE_EVENTS = 3  # Segment's /v1/track, and a /v1/batch of an identify and a page
EXPECTED_EVENTS = 7 + EDGE_EVENTS  # 3 server + 2 job + 2 webhook through the broker
EDGE_READY_SECONDS = 60.0
EXPECTED_DEAD_LETTERS = 3  # an unknown key, a deleted key, an event with no user


DEMO_KEY_NAME = "Demo server"  # and the run's time: a name is unique among current keys


@dataclass(frozen=True)
class DemoRun:
    org_id: int
    started_at: dt.datetime
    events: int  # stored since the run started: its own, and any sent earlier with the last run's key
    dead_letters: int
    key: str  # the one active demo key, shown once
    owner_link: str  # the demo owner's one-time link to set a password on the web pages


@dataclass(frozen=True)
class _Keys:
    org_id: int
    key_id: int
    key: str
    deleted_key_id: int
    deleted_key: str


def run(
    worker_command: list[str], edge_command: list[str], say: Callable[[str], None], timeout: float = 90.0
) -> DemoRun:
    settings = get_settings()
    schema.prepare(runtime.engine(), quiet=True)  # the quick start says what the demo leaves behind
    started_at = utcnow()
    keys = _demo_keys(started_at, say)

    log_path = Path("userpath-demo-worker.log").resolve()
    edge_log_path = Path("userpath-demo-edge.log").resolve()
    edge_url = f"http://127.0.0.1:{_free_port()}"
    try:
        with (
            _process(worker_command, log_path) as worker,
            _process([*edge_command, "--port", edge_url.rpartition(":")[2]], edge_log_path) as edge,
        ):
            _send(keys.key, keys.deleted_key, settings.broker_url)
            _send_through_edge(edge_url, keys.key, edge, edge_log_path)
            say(
                f"Sent {EXPECTED_EVENTS - EDGE_EVENTS} good events and {EXPECTED_DEAD_LETTERS} bad messages to the "
                f"broker, and {EDGE_EVENTS} events through the edge at {edge_url}; waiting for the worker..."
            )
            deadline = time.monotonic() + timeout
            while (done := _handled(keys, started_at)) != (EXPECTED_EVENTS, EXPECTED_DEAD_LETTERS):
                if worker.poll() is not None:
                    raise UserError(f"the demo worker exited early; see {log_path}")
                if time.monotonic() > deadline:
                    raise UserError(
                        f"the worker handled {done} (events, dead letters) in {timeout:.0f} s; see {log_path}"
                    )
                time.sleep(0.2)
    finally:
        # Only now: what was sent with an earlier run's key while no worker ran is stored above.
        _delete_earlier_demo_keys(keys.key_id)
    events, dead_letters = _counts(keys.org_id, started_at)
    return DemoRun(keys.org_id, started_at, events, dead_letters, keys.key, _owner_link(settings.web_base_url))


def _demo_keys(started_at: dt.datetime, say: Callable[[str], None]) -> _Keys:
    """The demo org (made once), a fresh key for this run, and one deleted at once."""
    with runtime.session_factory().begin() as session:
        try:
            organization = organizations.get_organization(session, DEMO_ORG)
            made = "from an earlier run"
        except NotFound:
            organization = organizations.create_organization(session, DEMO_ORG, DEMO_OWNER)
            made = "created now"
        service = KeyService(session, configured_pepper(get_settings()))
        stamp = started_at.strftime("%Y-%m-%d %H:%M:%S UTC")  # a run takes seconds: unique enough
        server, key = service.create(organization, f"{DEMO_KEY_NAME} {stamp}", DEMO_OWNER)
        deleted, deleted_key = service.create(organization, f"Demo deleted {stamp}", DEMO_OWNER)
        service.delete(deleted.id, DEMO_OWNER)
    say(
        f"Organization '{DEMO_ORG}' ({made}), owned by {DEMO_OWNER}, with a new key "
        f"{tokens.display_form(key)}; starting a worker..."
    )
    return _Keys(organization.id, server.id, key, deleted.id, deleted_key)


def _delete_earlier_demo_keys(kept_id: int) -> None:
    """Delete the current demo keys other than this run's, so that one stays active."""
    with runtime.session_factory().begin() as session:
        service = KeyService(session, configured_pepper(get_settings()))
        for key in service.list(organizations.get_organization(session, DEMO_ORG)):
            if key.deleted_at is None and key.name.startswith(f"{DEMO_KEY_NAME} ") and key.id != kept_id:
                service.delete(key.id, DEMO_OWNER)


def snippet(key: str) -> str:
    """Shell lines that send one event with ``key`` to the broker the demo used (read from the
    environment, as the demo read it, so that no broker password is printed)."""
    default_broker = Settings.model_fields["broker_url"].default
    return f"""{shlex.quote(sys.executable)} - <<'EOF'
import os
from userpath_client import UserPath

broker_url = os.environ.get("{BROKER_URL_VARIABLE}", "{default_broker}")
with UserPath("{key}", broker_url=broker_url) as userpath:
    userpath.track("Snippet Sent", user_id="user-1", properties={{"from": "the demo's snippet"}})
EOF"""


def curl_line(key: str, edge_base_url: str) -> str:
    """A shell line that sends one event with ``key`` through the edge, as Segment's HTTP API takes it."""
    body = json.dumps({"userId": "user-1", "event": "Curl Sent", "properties": {"via": "curl"}})
    return (
        f"curl -sS -u {shlex.quote(key + ':')} -H 'Content-Type: application/json' -d {shlex.quote(body)} "
        + shlex.quote(f"{edge_base_url}/v1/track")
    )


def _owner_link(web_base_url: str) -> str:
    """A fresh one-time link for the demo's owner: an invitation while they have no password, a
    password reset once they set one (the demo cannot know it). Issued as the operator."""
    with runtime.session_factory().begin() as session:
        organization = organizations.get_organization(session, DEMO_ORG)
        if accounts.account_has_password(session, DEMO_OWNER):
            token = accounts.reset_password(session, organization, DEMO_OWNER, accounts.OPERATOR)
        else:
            token = accounts.invite(session, organization, DEMO_OWNER, Role.OWNER, accounts.OPERATOR)
    return accounts.invitation_url(web_base_url, token)


def _send(key: str, deleted_key: str, broker_url: str) -> None:
    run = uuid.uuid4().hex[:8]  # webhook deliveries are stored once per org: new ids each run
    with UserPath(key, broker_url=broker_url) as client:
        client.track("Signed Up", user_id="user-1", properties={"plan": "pro"})
        client.track("Page Viewed", anonymous_id="anon-42", properties={"path": "/pricing"})
        client.track("Checkout Started", user_id="user-1", properties={"cart_value": 49.0})
        client.job_event(
            "Invoices Sent", user_id="billing-bot", properties={"count": 12}, job_name="send-invoices", run_id="run-1"
        )
        client.job_event("Cache Warmed", user_id="ops-bot", job_name="warm-cache", run_id="run-7")
        client.webhook(
            "stripe",
            f"evt_demo_{run}",
            {"Stripe-Signature": "t=1,v1=demo"},
            json.dumps({"type": "invoice.paid", "data": {"object": {"object": "invoice", "customer": "cus_demo"}}}),
        )
        client.webhook(
            "github",
            f"delivery-{run}",
            {"X-GitHub-Event": "issues"},
            json.dumps({"action": "opened", "sender": {"login": "octocat"}}),
        )
    with UserPath(tokens.generate(Environment.LIVE), broker_url=broker_url) as stranger:
        stranger.track("Signed Up", user_id="intruder")  # a well-formed key nobody issued
    with UserPath(deleted_key, broker_url=broker_url) as revoked:
        revoked.track("Signed Up", user_id="user-2")
    # The client refuses an invalid event at the call site; a careless producer in another
    # language would not, so send one the way it would.
    careless = Celery("careless-producer", broker=broker_url, set_as_current=False)
    envelope = {"api_key": key, "batch": [{"event": "Anonymous Nobody", "timestamp": utcnow().isoformat()}]}
    careless.send_task(
        TRACK_TASK, args=[envelope], queue=EVENTS_QUEUE, serializer="json", argsrepr=summarize_arguments([envelope])
    )
    careless.close()


def _send_through_edge(url: str, key: str, edge: subprocess.Popen[bytes], log_path: Path) -> None:
    """Segment-style calls to the demo's edge, as a Segment library sends them (the key as Basic
    user name); each answered 200 only once the broker has its events."""
    deadline = time.monotonic() + EDGE_READY_SECONDS
    while not _answers(f"{url}/healthz"):
        if edge.poll() is not None or time.monotonic() > deadline:
            raise UserError(f"the demo's edge did not start; see {log_path}")
        time.sleep(0.1)
    calls = [
        ("track", {"userId": "user-1", "event": "Plan Upgraded", "properties": {"plan": "team"}}),
        (
            "batch",
            {
                "batch": [
                    {"type": "identify", "userId": "user-1", "traits": {"email": "user-1@demo.example"}},
                    {"type": "page", "anonymousId": "anon-42", "name": "Pricing", "properties": {"path": "/pricing"}},
                ]
            },
        ),
    ]
    authorization = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
    for route, body in calls:
        request = urllib.request.Request(
            f"{url}/v1/{route}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Authorization": authorization},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as error:
            answer = {"status": error.code, **json.loads(error.read())}
        if answer != {"success": True}:
            raise UserError(f"the demo's edge answered /v1/{route} with {answer}; see {log_path}")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:  # not listening yet (URLError is an OSError)
        return False


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _handled(keys: _Keys, since: dt.datetime) -> tuple[int, int]:
    """This run's messages stored and dead-lettered so far, told apart by their keys (the
    stranger's unknown key is none)."""
    with runtime.session_factory()() as session:
        events = session.scalar(
            select(func.count()).select_from(Event).where(Event.api_key_id == keys.key_id, Event.received_at >= since)
        )
        dead = session.scalar(
            select(func.count())
            .select_from(DeadLetter)
            .where(
                DeadLetter.received_at >= since,
                DeadLetter.api_key_id.in_([keys.key_id, keys.deleted_key_id]) | DeadLetter.api_key_id.is_(None),
            )
        )
        return events or 0, dead or 0


def _counts(org_id: int, since: dt.datetime) -> tuple[int, int]:
    """The organization's events and every dead letter since ``since``: what the run shows."""
    with runtime.session_factory()() as session:
        events = session.scalar(
            select(func.count()).select_from(Event).where(Event.org_id == org_id, Event.received_at >= since)
        )
        dead = session.scalar(select(func.count()).select_from(DeadLetter).where(DeadLetter.received_at >= since))
        return events or 0, dead or 0


@contextlib.contextmanager
def _process(command: list[str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The demo's worker or edge, stopped on exit."""
    with log_path.open("wb") as log:
        # A demo serves no metrics.
        environment = {**os.environ, "USERPATH_METRICS_PORT": "0", "USERPATH_EDGE_METRICS_PORT": "0"}
        process = subprocess.Popen(
            command, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
