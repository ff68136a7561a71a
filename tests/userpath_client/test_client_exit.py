"""No silent loss at exit: events buffered in a process that ends without ``atexit`` are sent.

Each case is a real Python process publishing to the real Redis on 127.0.0.1 (database 4): a
multiprocessing child (which ends with ``os._exit``), a ``Pool(maxtasksperchild=1)``, a Celery
prefork worker process, and a process killed with SIGTERM. ``flush_interval`` is 60 s everywhere,
so nothing is sent by the timer: only the exit path can have sent it. Every wait is bounded.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import pytest
from kombu.message import Message

from tests.common.brokers import read_messages
from userpath_client.contract import EVENTS_QUEUE
from userpath_worker.keys import tokens
from userpath_worker.keys.tokens import Environment

REPOSITORY = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def api_key() -> str:
    return tokens.generate(Environment.LIVE)


def event_names(messages: list[Message]) -> list[str]:
    return sorted(event["event"] for message in messages for event in message.decode()[0][0]["batch"])


def python(script: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", script], cwd=REPOSITORY, stdout=subprocess.PIPE, text=True)


def run(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], cwd=REPOSITORY, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_a_multiprocessing_child_that_returns_sends_its_events(
    start_method: str, api_key: str, exit_broker_url: str, tmp_path: pathlib.Path
) -> None:
    # fork: the client is the parent's, inherited; spawn: the child imports the module and makes its own.
    script = f"""
        import multiprocessing
        from userpath_client import UserPath

        userpath = UserPath({api_key!r}, {exit_broker_url!r}, flush_interval=60)

        def child():
            for number in range(5):
                userpath.track(f"Child {{number}}", user_id="u")

        if __name__ == "__main__":
            process = multiprocessing.get_context({start_method!r}).Process(target=child)
            process.start()
            process.join(30)
            assert process.exitcode == 0, process.exitcode
            userpath.close()
    """
    path = tmp_path / "parent.py"  # spawn needs a main module on disk
    path.write_text(textwrap.dedent(script))
    result = subprocess.run([sys.executable, str(path)], cwd=REPOSITORY, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    # The parent queued nothing: one message, the child's five events.
    assert event_names(read_messages(exit_broker_url, EVENTS_QUEUE, 1)) == [f"Child {n}" for n in range(5)]


def test_a_pool_with_one_task_per_child_sends_every_task_s_events(api_key: str, exit_broker_url: str) -> None:
    result = run(
        f"""
        import multiprocessing
        from userpath_client import UserPath

        userpath = UserPath({api_key!r}, {exit_broker_url!r}, flush_interval=60)

        def task(number):
            for step in range(3):
                userpath.track(f"Task {{number}} step {{step}}", user_id="u")
            return number

        pool = multiprocessing.get_context("fork").Pool(2, maxtasksperchild=1)
        assert pool.map(task, range(6)) == list(range(6))
        pool.close()  # not terminate() (nor the with block): that SIGTERMs the workers
        pool.join()
        """
    )
    assert result.returncode == 0, result.stderr
    expected = sorted(f"Task {n} step {s}" for n in range(6) for s in range(3))
    assert event_names(read_messages(exit_broker_url, EVENTS_QUEUE, 6)) == expected


SIGTERM_SCRIPT = """
import signal, sys, time
from userpath_client import UserPath
{before}
userpath = UserPath({api_key!r}, {url!r}, flush_interval=60{options})
for number in range(5):
    userpath.track(f"Killed {{number}}", user_id="u")
print("ready", flush=True)
time.sleep(60)
"""


def killed(api_key: str, url: str, before: str = "", options: str = "") -> tuple[int, str]:
    """Start the script (``before`` first), SIGTERM it once its events are queued; its exit code and output."""
    process = python(SIGTERM_SCRIPT.format(api_key=api_key, url=url, before=before, options=options))
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == "ready\n"
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        process.kill()
        process.wait(10)
    return process.returncode, output


def test_sigterm_with_the_opt_in_flushes_then_dies_of_sigterm(api_key: str, exit_broker_url: str) -> None:
    returncode, _ = killed(api_key, exit_broker_url, options=", flush_on_sigterm=True")
    assert returncode == -signal.SIGTERM  # ends as SIGTERM's default would, once flushed
    assert event_names(read_messages(exit_broker_url, EVENTS_QUEUE, 1)) == [f"Killed {n}" for n in range(5)]


def test_sigterm_flush_chains_the_previous_handler(api_key: str, exit_broker_url: str) -> None:
    before = """
import os
def previous(signum, frame):  # os._exit, not sys.exit: atexit would flush, hiding a missing flush
    print("previous handler ran", flush=True)
    os._exit(3)
signal.signal(signal.SIGTERM, previous)
"""
    returncode, output = killed(api_key, exit_broker_url, before=before, options=", flush_on_sigterm=True")
    assert (returncode, output) == (3, "previous handler ran\n")
    assert event_names(read_messages(exit_broker_url, EVENTS_QUEUE, 1)) == [f"Killed {n}" for n in range(5)]


def test_sigterm_without_the_opt_in_loses_the_buffered_events(api_key: str, exit_broker_url: str) -> None:
    """What the README says: SIGTERM's default kills the process before any Python code runs."""
    returncode, _ = killed(api_key, exit_broker_url)
    assert returncode == -signal.SIGTERM
    read_messages(exit_broker_url, EVENTS_QUEUE, 0, timeout=1)


CELERY_APP = """
from celery import Celery
from userpath_client import UserPath

app = Celery("exit_app", broker={url!r})
app.conf.task_default_queue = "exit-test"
userpath = UserPath({api_key!r}, {url!r}, flush_interval=60)  # Celery is imported: its signal is connected

@app.task(name="exit_app.track")
def track(number):
    for step in range(3):
        userpath.track(f"Task {{number}} step {{step}}", user_id="u")
"""


def test_a_celery_worker_process_sends_its_events_when_it_is_replaced(
    api_key: str, exit_broker_url: str, tmp_path: pathlib.Path
) -> None:
    """billiard's child ends with os._exit after worker_process_shutdown: the client's receiver flushes."""
    (tmp_path / "exit_app.py").write_text(CELERY_APP.format(api_key=api_key, url=exit_broker_url))
    command = [sys.executable, "-m", "celery", "-A", "exit_app", "worker", "--pool=prefork", "--concurrency=1"]
    command += ["--max-tasks-per-child=1", "-Q", "exit-test", "--without-gossip", "--without-mingle", "-l", "WARNING"]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPOSITORY)])}
    worker = subprocess.Popen(command, cwd=tmp_path, env=environment, stdout=subprocess.DEVNULL)
    try:
        sender = run(
            f"""
            import sys
            sys.path.insert(0, {str(tmp_path)!r})
            from exit_app import track
            for number in range(2):
                track.delay(number)
            """
        )
        assert sender.returncode == 0, sender.stderr
        # Each task's child is replaced after it: both tasks' events arrive while the worker runs.
        messages = read_messages(exit_broker_url, EVENTS_QUEUE, 2, timeout=30)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        finally:
            worker.kill()
            worker.wait(10)
    assert event_names(messages) == sorted(f"Task {n} step {s}" for n in range(2) for s in range(3))
