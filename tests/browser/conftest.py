"""Browser fixtures: the system's Chromium driven by Playwright (never a downloaded
browser), a real `broker api` server and a real worker process on the test database.

Without a browser the tests skip, saying why, unless CI is set: under CI (.ci/run
installs Debian's chromium) a missing browser fails the run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.acceptance.worker_harness import ROOT, worker_env
from tests.api.conftest import serve

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; under CI the browser tests must run (.ci/run installs chromium)")
    pytest.skip(f"{reason} (apt-get install chromium, pip install playwright)")


def chromium_candidates() -> tuple[str, ...]:
    """Where to look for the system's Chromium: BROKER_TEST_CHROMIUM when set, else
    Debian's /usr/bin/chromium or one on PATH."""
    given = os.environ.get("BROKER_TEST_CHROMIUM")
    return (given,) if given else CHROMIUM_CANDIDATES


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium (the system's), for one test module: Playwright's sync API keeps
    an event loop running in this thread while it is open, which would break the
    asyncio.run() of tests in other modules."""
    looked = chromium_candidates()
    path = next((found for c in looked if (found := shutil.which(c))), None)
    if path is None:
        _missing("no Chromium found (looked for " + ", ".join(looked) + ")")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package is not installed")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def live_server(db_url: str) -> Iterator[str]:
    """Base URL of a real `broker api` (uvicorn, subprocess) on the test database."""
    with serve(db_url) as base:
        yield base


@pytest.fixture
def worker(db_url: str, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real `python -m broker.worker` running tests/browser/ui_tasks.py."""
    log = (tmp_path / "worker.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "broker.worker", "--tasks", "tests.browser.ui_tasks",
         "--queues", "default", "--concurrency", "4"],
        cwd=ROOT,
        env=worker_env(db_url, tmp_path / "state"),
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


class OffsiteGuard:
    """Aborts every request a page makes to a host other than the app's, and records it."""

    def __init__(self, base: str) -> None:
        self.origin = urlsplit(base).netloc
        self.blocked: list[str] = []

    def __call__(self, route: Any) -> None:
        url = route.request.url
        parts = urlsplit(url)
        if parts.scheme in ("http", "https", "ws", "wss") and parts.netloc != self.origin:
            self.blocked.append(url)
            route.abort()
        else:
            route.continue_()


@pytest.fixture
def screenshots(tmp_path: Path) -> Iterator[Any]:
    """`shot(page, name)`: a PNG of the page under the test's tmp dir (and, when
    BROKER_UI_SCREENSHOTS names a directory, a copy there: how docs/ui/ is refreshed)."""
    out = tmp_path / "screenshots"
    out.mkdir()
    extra = os.environ.get("BROKER_UI_SCREENSHOTS")

    def shot(page: Any, name: str) -> Path:
        target = out / f"{name}.png"
        page.screenshot(path=str(target), full_page=False)
        if extra:
            Path(extra).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(target, Path(extra) / target.name)
        return target

    yield shot
