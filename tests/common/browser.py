"""A real browser for end-to-end tests: Debian's Chromium driven by Selenium through the system
chromedriver, and ``userpath web`` run as a subprocess.

The browser never skips a test: when it cannot start, the test fails and says how to install it
(``.ci/run`` installs ``chromium`` and ``chromium-driver`` when they are missing). Every wait here
is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.wait import WebDriverWait

from tests.common.workers import REPOSITORY, stop, wait_for, worker_environment

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
INSTALL_HINT = "install it: apt-get install -y chromium chromium-driver (.ci/run does when they are missing)"
WINDOW_SIZE = "1280,900"
PAGE_LOAD_TIMEOUT = 30.0  # seconds: a page of ours on 127.0.0.1 loads in well under one
ELEMENT_TIMEOUT = 10.0
USERPATH = str(Path(sys.executable).with_name("userpath"))
WEB_SECRET = "browser-test-web-secret-0123456789abcdef"


def start_chromium() -> WebDriver:
    """Headless Chromium under ``/usr/bin/chromedriver``; fails the test (never skips) if it cannot start.

    Chromium's performance log is on, so that ``requested_urls`` can list every URL the browser
    asked for, redirects included, and its console log, for ``console_problems``.
    """
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        pytest.fail(f"the browser cannot start: {', '.join(missing)} missing; {INSTALL_HINT}", pytrace=False)
    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={WINDOW_SIZE}"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    try:
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    except WebDriverException as error:
        pytest.fail(f"the browser cannot start: {error.msg or error}; {INSTALL_HINT}", pytrace=False)
    driver.set_page_load_timeout(PAGE_LOAD_TIMEOUT)
    driver.set_script_timeout(ELEMENT_TIMEOUT)
    return driver


@contextlib.contextmanager
def chromium() -> Iterator[WebDriver]:
    """``start_chromium()``, quit on exit (for fixtures: ``with chromium() as driver: yield driver``)."""
    driver = start_chromium()
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver: WebDriver, tmp_path: Path, name: str) -> Path:
    """Save the page as ``tmp_path/NN-name.png``, numbered in the order taken."""
    path = tmp_path / f"{len(list(tmp_path.glob('*.png'))):02d}-{name}.png"
    assert driver.save_screenshot(str(path)), f"no screenshot of {driver.current_url} saved to {path}"
    return path


def requested_urls(driver: WebDriver) -> list[str]:
    """Every URL the browser requested since the last call, and every redirect's Location (from
    Chromium's performance log, which this call drains)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") != "Network.requestWillBeSent":
            continue
        urls.append(message["params"]["request"]["url"])
        redirect = message["params"].get("redirectResponse")
        if redirect:
            headers = {name.lower(): value for name, value in redirect.get("headers", {}).items()}
            urls.append(headers.get("location", ""))
    return urls


def console_problems(driver: WebDriver) -> list[str]:
    """The console's warnings and errors since the last call (a script error, a Content-Security-Policy
    violation, a resource that failed to load), which this call drains. The browser's own request for
    /favicon.ico, which no page makes, is left out."""
    return [
        entry["message"]
        for entry in driver.get_log("browser")
        if entry["level"] in ("WARNING", "SEVERE") and "/favicon.ico " not in entry["message"]
    ]


# What Chromium's inspector answers, instead of a StaleElementReferenceException, when a probe
# reaches an element of a document that a navigation is replacing: the old page is gone.
NODE_GONE = "does not belong to the document"


def _page_replaced(error: WebDriverException) -> bool:
    return isinstance(error, StaleElementReferenceException) or NODE_GONE in (error.msg or str(error))


def element(driver: WebDriver, css: str, timeout: float = ELEMENT_TIMEOUT) -> WebElement:
    """The element ``css`` once it is on the page; fails after ``timeout`` seconds, naming the page.
    A probe that meets a document being replaced (a navigation still under way) probes again."""

    def present(_: WebDriver) -> WebElement | None:
        try:
            return expected_conditions.presence_of_element_located((By.CSS_SELECTOR, css))(driver)
        except WebDriverException as error:
            if _page_replaced(error):
                return None
            raise

    try:
        return WebDriverWait(driver, timeout).until(present)
    except WebDriverException:
        raise AssertionError(
            f"no {css} on {driver.current_url} within {timeout:.0f} s; the page says:\n{page_text(driver)[:2000]}"
        ) from None


def page_text(driver: WebDriver) -> str:
    return driver.find_element(By.TAG_NAME, "body").text


def _gone(old_page: WebElement) -> Callable[[WebDriver], bool]:
    """A wait condition: the browser has left the page ``old_page`` belongs to."""

    def gone(_: WebDriver) -> bool:
        try:
            old_page.is_enabled()  # any call on an element of a page that is gone raises
        except WebDriverException as error:
            if _page_replaced(error):
                return True
            raise
        return False

    return gone


def click_through(driver: WebDriver, css: str, then: str, timeout: float = PAGE_LOAD_TIMEOUT) -> WebElement:
    """Click ``css`` (a submit button or a link), wait until the browser has left the page it was
    on, then until the next page shows ``then``; that element. Both waits are bounded."""
    target = element(driver, css)
    old_page = driver.find_element(By.TAG_NAME, "html")
    target.click()
    try:
        WebDriverWait(driver, timeout).until(_gone(old_page))
    except WebDriverException:
        raise AssertionError(f"clicking {css} did not leave {driver.current_url} within {timeout:.0f} s") from None
    return element(driver, then, timeout)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def web_environment(database_url: str, broker_url: str, port: int, **extra: str) -> dict[str, str]:
    """The environment of ``userpath web`` on ``port`` (and of the CLI commands whose links point at it)."""
    return worker_environment(
        database_url,
        broker_url,
        USERPATH_WEB_SECRET=WEB_SECRET,
        USERPATH_WEB_BASE_URL=f"http://127.0.0.1:{port}",
        **extra,
    )


def userpath(environment: dict[str, str], *arguments: str, timeout: float = 60.0) -> str:
    """Run the real ``userpath`` command; its standard output (fails on a non-zero exit)."""
    completed = subprocess.run(
        [USERPATH, *arguments], env=environment, cwd=REPOSITORY, capture_output=True, text=True, timeout=timeout
    )
    assert completed.returncode == 0, f"userpath {' '.join(arguments)}:\n{completed.stdout}{completed.stderr}"
    return completed.stdout


@dataclass
class WebServer:
    url: str
    log_path: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def running_web(environment: dict[str, str], log_path: Path, ready_within: float = 60.0) -> Iterator[WebServer]:
    """``userpath web --host 127.0.0.1 --port P`` (P from ``USERPATH_WEB_BASE_URL``)."""
    url = environment["USERPATH_WEB_BASE_URL"]
    port = url.rsplit(":", 1)[1]
    with running_server(
        ["web", "--host", "127.0.0.1", "--port", port], url, environment, log_path, ready_within
    ) as web:
        yield web


@contextlib.contextmanager
def running_server(
    arguments: list[str], url: str, environment: dict[str, str], log_path: Path, ready_within: float = 60.0
) -> Iterator[WebServer]:
    """``userpath ARGUMENTS`` serving ``url``, once its ``/healthz`` answers 200; stopped (and killed
    if need be) on exit. Its output goes to ``log_path``."""
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [USERPATH, *arguments],
            env=environment,
            cwd=REPOSITORY,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(lambda: _healthy(url) or process.poll() is not None, ready_within, f"{url}/healthz to answer")
        if process.poll() is not None:
            raise AssertionError(
                f"userpath {arguments[0]} exited at start ({process.returncode}):\n{log_path.read_text()[-3000:]}"
            )
        yield WebServer(url, log_path, process)
    finally:
        stop(process)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False
