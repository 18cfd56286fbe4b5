"""The operator UI in a real browser: headless Chromium against a real API server and a
real worker process. What an operator does, in order: sign in, read a queue's counts,
open a failed job, retry it and watch it succeed, follow a running job's log and cancel
it, pause the queue; then the other pages, a bulk retry's confirmation, and a read-only
token. Every page gets a screenshot; no request may leave for another host."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from broker import Broker
from tests.acceptance.worker_harness import scalar, wait_for
from tests.api.conftest import ADMIN, WORK
from tests.browser.conftest import OffsiteGuard

pytestmark = pytest.mark.timeout(240)
WAIT_MS = 30_000


def _state(db_url: str, job_id: int) -> str:
    return str(scalar(db_url, "SELECT state FROM broker.jobs WHERE id = %s", (job_id,)))


def test_an_operator_session_in_chromium(
    browser: Any,
    live_server: str,
    worker: Any,
    db_url: str,
    screenshots: Callable[[Any, str], Path],
) -> None:
    from playwright.sync_api import expect

    guard = OffsiteGuard(live_server)
    context = browser.new_context(viewport={"width": 1180, "height": 760}, base_url=live_server)
    context.route("**/*", guard)
    page = context.new_page()
    console_errors: list[str] = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)

    with Broker.connect(db_url, max_size=2) as broker:
        failing = broker.enqueue("ui.flaky", {"note": "<b>not bold</b>"}).id
        wait_for(lambda: _state(db_url, failing) == "failed", 30, "the flaky job to fail")

        # Sign in: /ui sends a browser without a session to the form.
        page.goto("/ui")
        expect(page).to_have_url(re.compile(r"/ui/login$"))
        screenshots(page, "login")
        page.fill("#token", "wrong-token")
        page.click("button[type=submit]")
        expect(page.locator(".error")).to_contain_text("not valid")
        page.fill("#token", ADMIN)
        page.click("button[type=submit]")
        expect(page.locator("h1")).to_have_text("Overview")
        cookie = next(c for c in context.cookies() if c["name"] == "broker_ui_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

        # A queue's counts.
        row = page.locator('tr[data-queue="default"]')
        expect(row.locator('[data-count="failed"]')).to_have_text("1")
        expect(row.locator('[data-count="recent-failed"]')).to_have_text("1")
        screenshots(page, "overview")

        # Open the failed job from the jobs list, filtered to failed jobs.
        page.click("nav >> text=Jobs")
        page.select_option("select[name=state]", "failed")
        page.click("form.filters button[type=submit]")
        expect(page).to_have_url(re.compile(r"state=failed"))
        screenshots(page, "jobs")
        page.click(f'tr[data-job="{failing}"] a >> text="{failing}"')
        expect(page.locator("#job-state")).to_have_text("failed")
        expect(page.locator("#job-error")).to_contain_text("attempt 1 fails on purpose")
        expect(page.locator("#job-args")).to_contain_text("<b>not bold</b>")  # text, not markup
        assert page.locator("#job-args b").count() == 0
        screenshots(page, "job-failed")

        # Retry it and watch it succeed: htmx refreshes the page's state while it runs.
        page.click("form[action$='/retry'] button")
        expect(page.locator(".notice")).to_contain_text("queued again")
        expect(page.locator("#job-state")).to_have_text("succeeded", timeout=WAIT_MS)
        expect(page.locator("#job-result")).to_contain_text('"attempt": 2')
        expect(page.locator("#job-events")).to_contain_text("retried")
        assert _state(db_url, failing) == "succeeded"
        screenshots(page, "job-succeeded")

        # A running job: its live log grows (server-sent events), then cancel it.
        running = broker.enqueue("ui.slow").id
        wait_for(lambda: _state(db_url, running) == "running", 30, "the slow job to start")
        page.goto(f"/ui/jobs/{running}")
        expect(page.locator("#job-state")).to_have_text("running")
        expect(page.locator("#job-log")).to_contain_text("tick 3", timeout=WAIT_MS)
        screenshots(page, "job-running")
        page.click("form[action$='/cancel'] button")
        expect(page.locator(".notice")).to_contain_text("Cancellation requested")
        expect(page.locator("#job-state")).to_have_text("cancelled", timeout=WAIT_MS)
        assert _state(db_url, running) == "cancelled"
        expect(page.locator("#job-log-status")).to_contain_text("finished")
        screenshots(page, "job-cancelled")

        # Pause the queue: the worker stops claiming from it.
        page.click("nav >> text=Overview")
        page.click('tr[data-queue="default"] form[action="/ui/queues/default/pause"] button')
        expect(page.locator(".notice")).to_contain_text("paused")
        expect(page.locator('tr[data-queue="default"] .queue-state')).to_have_text("paused")
        assert scalar(db_url, "SELECT paused FROM broker.queues WHERE name = 'default'")
        held = broker.enqueue("ui.flaky").id
        page.reload()
        expect(page.locator('tr[data-queue="default"] [data-count="available"]')).to_have_text(
            "1", timeout=WAIT_MS
        )
        screenshots(page, "overview-paused")

        # The other pages.
        page.click("nav >> text=Workers")
        expect(page.locator("tbody tr")).to_have_count(1)
        expect(page.locator("tbody")).to_contain_text("alive")
        screenshots(page, "workers")
        page.click("nav >> text=Schedules")
        expect(page.locator('tr[data-schedule="ui.report"]')).to_be_visible()
        screenshots(page, "schedules")
        page.click("nav >> text=Groups")
        expect(page.locator("h1")).to_have_text("Groups")

        # A bulk retry for a filtered set goes through a confirmation page.
        page.goto("/ui/jobs?state=cancelled")
        page.click("text=Retry all matching")
        expect(page.locator(".warning")).to_contain_text("1 job(s) will be queued again")
        screenshots(page, "bulk-confirm")
        page.click("form.confirm button[type=submit]")
        expect(page.locator(".notice")).to_contain_text("1 job(s) queued again")
        assert _state(db_url, running) == "queued"  # the queue is paused: it waits
        assert _state(db_url, held) == "queued"

        # Resume, then sign out; a token without write scopes sees no buttons.
        page.click("nav >> text=Overview")
        page.click('form[action="/ui/queues/default/resume"] button')
        expect(page.locator('tr[data-queue="default"] .queue-state')).to_have_text("active")
        page.click("text=Sign out")
        expect(page).to_have_url(re.compile(r"/ui/login"))
        page.fill("#token", WORK)
        page.click("button[type=submit]")
        page.goto(f"/ui/jobs/{failing}")
        expect(page.locator("#job-state")).to_have_text("succeeded")
        assert page.locator("form[action$='/retry'], form[action$='/cancel']").count() == 0
        page.goto("/ui")
        assert page.locator("form[action*='/pause']").count() == 0

    time.sleep(0.2)  # let any last background fetch reach the guard
    context.close()
    assert guard.blocked == [], f"requests to other hosts: {guard.blocked}"
    assert not [e for e in console_errors if "Content Security Policy" in e], console_errors
