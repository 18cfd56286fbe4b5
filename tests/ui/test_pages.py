"""/ui pages and actions over HTTP: escaping of attacker-controlled text, filters and
keyset paging, bulk actions, the overview's counts, the live log, and /v1 left intact."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import psycopg
import pytest

from broker import Broker
from broker import inspection as views
from broker import schedules as sch
from broker.lease import MAX_BULK_JOBS
from tests.api.conftest import bearer
from tests.dbtime import advance_db_time
from tests.ui.conftest import ADMIN, SUBMIT, UiClient, csrf_of, fail_job, sign_in

HOSTILE = '<script>alert("x")</script>\'"&<b>'


def job_ids(page: str) -> list[int]:
    return [int(i) for i in re.findall(r'<tr data-job="(\d+)">', page)]


def test_args_errors_logs_and_tags_are_escaped(admin: UiClient, broker: Broker) -> None:
    job = broker.enqueue(
        "k", {"html": HOSTILE, HOSTILE: [HOSTILE]}, tags=[HOSTILE], group="g1", queue="q1"
    )
    [held] = broker.claim(["q1"], 1, "h:1")
    broker.append_logs([(held, "log " + HOSTILE)])
    broker.fail(
        held, "Traceback (most recent call last):\n  boom\nValueError: " + HOSTILE, retryable=False
    )
    pages = [
        admin.get(f"/ui/jobs/{job.id}").text,
        admin.get("/ui/jobs").text,
        admin.get("/ui/jobs", params={"tag": HOSTILE}).text,
        admin.get("/ui/jobs/bulk", params={"action": "retry", "tag": HOSTILE}).text,
    ]
    for page in pages:
        assert "<script>alert" not in page
        assert "<b>" not in page
        assert "&lt;script&gt;alert(" in page
    detail = pages[0]
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&#39;&#34;&amp;&lt;b&gt;" in detail
    assert "ValueError: &lt;script&gt;" in detail  # the error with its traceback
    assert "Traceback (most recent call last)" in detail
    assert "log &lt;script&gt;" in detail  # the log line
    # A value reflected into an attribute cannot close it.
    assert 'value="&lt;script&gt;alert(&#34;x&#34;)' in pages[2]
    # The only scripts on a page are the app's own files.
    for page in pages:
        assert re.findall(r"<script[^>]*>", page) == [
            '<script src="/ui/static/htmx-2.0.11.min.js" defer>',
            '<script src="/ui/static/ui.js" defer>',
        ]


def test_a_job_page_shows_args_result_error_and_events(admin: UiClient, broker: Broker) -> None:
    job = broker.enqueue("k", {"n": 1}, max_attempts=2)
    [held] = broker.claim(["default"], 1, "h:1")
    broker.fail(held, "first try broke", delay=0)
    [held] = broker.claim(["default"], 1, "h:1")
    broker.complete(held, {"answer": 42})
    page = admin.get(f"/ui/jobs/{job.id}").text
    assert '<span class="badge succeeded" id="job-state">succeeded</span>' in page
    assert "&#34;answer&#34;: 42" in page
    assert "first try broke" in page
    events = re.findall(r"<strong>(\w+)</strong>", page)
    assert events == ["enqueued", "claimed", "attempt_failed", "claimed", "succeeded"]
    # A finished job's page does not poll any more.
    assert "hx-trigger" not in page


def test_jobs_filter_by_queue_state_kind_tag_and_group(admin: UiClient, broker: Broker) -> None:
    a = broker.enqueue("send", queue="qa", tags=["red"], group="g1")
    b = broker.enqueue("send", queue="qb", tags=["blue"], group="g1")
    c = broker.enqueue("bill", queue="qa", tags=["red", "blue"])
    d = broker.enqueue("bill", queue="qb")
    broker.cancel(d.id)
    cases: list[tuple[dict[str, str], list[int]]] = [
        ({}, [d.id, c.id, b.id, a.id]),
        ({"queue": "qa"}, [c.id, a.id]),
        ({"kind": "bill"}, [d.id, c.id]),
        ({"tag": "red"}, [c.id, a.id]),
        ({"group": "g1"}, [b.id, a.id]),
        ({"state": "cancelled"}, [d.id]),
        ({"queue": "qa", "tag": "blue"}, [c.id]),
        ({"queue": "", "kind": "", "state": "", "tag": "", "group": ""}, [d.id, c.id, b.id, a.id]),
        ({"queue": "nowhere"}, []),
    ]
    for params, expected in cases:
        answer = admin.get("/ui/jobs", params=params)
        assert answer.status_code == 200, params
        assert job_ids(answer.text) == expected, params


@pytest.mark.parametrize(
    "params",
    [
        {"state": "sleeping"},
        {"queue": "bad queue"},
        {"kind": "send\n"},
        {"group": "x" * 1000},
        {"cursor": "not-a-cursor"},
        {"limit": "0"},
        {"limit": "many"},
    ],
)
def test_bad_filters_answer_400_as_a_page(admin: UiClient, params: dict[str, str]) -> None:
    answer = admin.get("/ui/jobs", params=params)
    assert answer.status_code == 400
    assert answer.headers["content-type"].startswith("text/html")
    assert "<h1>400 Bad Request</h1>" in answer.text


def test_keyset_paging_walks_every_job_once(admin: UiClient, broker: Broker) -> None:
    made = [broker.enqueue("k", queue="qp").id for _ in range(7)]
    broker.enqueue("k", queue="other")
    seen: list[int] = []
    url: str | None = "/ui/jobs?queue=qp&limit=3"
    while url:
        page = admin.get(url).text
        ids = job_ids(page)
        assert 0 < len(ids) <= 3
        seen += ids
        found = re.search(r'<a rel="next" href="([^"]+)"', page)
        url = found.group(1).replace("&amp;", "&") if found else None
        if url:
            assert "queue=qp" in url and "limit=3" in url
    assert seen == sorted(made, reverse=True)


def _bulk(admin: UiClient, action: str, **filters: str) -> tuple[list[int], Any]:
    """Open the confirmation page, then confirm with the form it shows."""
    confirm = admin.get("/ui/jobs/bulk", params={"action": action, **filters})
    assert confirm.status_code == 200
    form = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', confirm.text))
    ids = [int(i) for i in form.get("ids", "").split(",") if i]
    if not ids:
        return [], None
    done = admin.post("/ui/jobs/bulk", data=form, follow_redirects=False)
    return ids, done


def test_bulk_cancel_acts_on_the_confirmed_filtered_set_only(
    admin: UiClient, broker: Broker, conn: psycopg.Connection[Any]
) -> None:
    target = [broker.enqueue("k", queue="qa", tags=["t"]).id for _ in range(3)]
    other_tag = broker.enqueue("k", queue="qa").id
    other_queue = broker.enqueue("k", queue="qb", tags=["t"]).id
    [running] = broker.claim(["qa"], 1, "h:1")  # the oldest target job, now running
    assert running.job_id == target[0]
    confirm = admin.get("/ui/jobs/bulk", params={"action": "cancel", "queue": "qa", "tag": "t"})
    assert "<strong>3</strong> job(s)" in confirm.text
    # Enqueued after the confirmation: matches the filter, but was not confirmed.
    late = broker.enqueue("k", queue="qa", tags=["t"]).id
    form = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', confirm.text))
    assert sorted(int(i) for i in form["ids"].split(",")) == target
    done = admin.post("/ui/jobs/bulk", data=form, follow_redirects=False)
    assert done.status_code == 303
    assert done.headers["location"].startswith("/ui/jobs?queue=qa&tag=t&notice=bulk-cancelled&n=3")
    states = {i: broker.get_job(i).state for i in [*target, other_tag, other_queue, late]}
    assert states == {
        target[0]: "running",  # asked to stop: its worker acknowledges
        target[1]: "cancelled",
        target[2]: "cancelled",
        other_tag: "queued",
        other_queue: "queued",
        late: "queued",
    }
    assert broker.get_job(target[0]).cancel_requested_at is not None


def test_bulk_retry_retries_failed_jobs_of_the_filter_only(admin: UiClient, broker: Broker) -> None:
    failed_a = []
    for _ in range(2):
        job = broker.enqueue("k", queue="qa")
        fail_job(broker, job.id, "boom", queue="qa")
        failed_a.append(job.id)
    failed_b = broker.enqueue("k", queue="qb").id
    fail_job(broker, failed_b, "boom", queue="qb")
    queued_a = broker.enqueue("k", queue="qa").id
    ids, done = _bulk(admin, "retry", queue="qa")
    assert sorted(ids) == failed_a
    assert done.status_code == 303
    assert "n=2" in done.headers["location"]
    assert [broker.get_job(i).state for i in failed_a] == ["queued", "queued"]
    assert broker.get_job(failed_b).state == "failed"
    assert broker.get_job(queued_a).state == "queued"
    # Nothing left to retry: the confirmation says so and offers no form.
    page = admin.get("/ui/jobs/bulk", params={"action": "retry", "queue": "qa"}).text
    assert "No job matching this filter can be retried" in page
    assert 'action="/ui/jobs/bulk"' not in page


def test_bulk_changes_only_jobs_still_in_a_state_the_action_accepts(
    admin: UiClient, broker: Broker
) -> None:
    done_job = broker.enqueue("k").id
    [held] = broker.claim(["default"], 1, "h:1")
    broker.complete(held)
    queued = broker.enqueue("k").id
    csrf = csrf_of(admin)
    answer = admin.post(
        "/ui/jobs/bulk",
        data={"csrf": csrf, "action": "retry", "ids": f"{done_job},{queued}"},
        follow_redirects=False,
    )
    assert answer.status_code == 303
    assert "n=0" in answer.headers["location"]
    assert broker.get_job(done_job).state == "succeeded"
    assert broker.get_job(queued).state == "queued"


def test_bulk_input_is_checked(admin: UiClient) -> None:
    csrf = csrf_of(admin)
    too_many = ",".join(str(i) for i in range(1, MAX_BULK_JOBS + 2))
    for form in (
        {"action": "delete", "ids": "1"},
        {"action": "cancel", "ids": "1,x"},
        {"action": "cancel", "ids": "-1"},
        {"action": "cancel", "ids": too_many},
    ):
        answer = admin.post("/ui/jobs/bulk", data={"csrf": csrf, **form}, follow_redirects=False)
        assert answer.status_code == 400, form
    assert admin.get("/ui/jobs/bulk", params={"action": "drop"}).status_code == 400


def test_a_bulk_action_skips_a_job_another_transaction_holds(
    admin: UiClient, broker: Broker, db_url: str
) -> None:
    ids = [broker.enqueue("k", queue="qa").id for _ in range(3)]
    confirm = admin.get("/ui/jobs/bulk", params={"action": "cancel", "queue": "qa"})
    form = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', confirm.text))
    with psycopg.connect(db_url) as holder:  # an open transaction holding one row
        holder.execute("SELECT 1 FROM broker.jobs WHERE id = %s FOR UPDATE", [ids[1]])
        done = admin.post("/ui/jobs/bulk", data=form, follow_redirects=False)
        assert done.status_code == 303
        assert "n=2" in done.headers["location"]
    assert [broker.get_job(i).state for i in ids] == ["cancelled", "queued", "cancelled"]


def test_a_bulk_post_with_a_bad_filter_changes_nothing(admin: UiClient, broker: Broker) -> None:
    job = broker.enqueue("k").id
    answer = admin.post(
        "/ui/jobs/bulk",
        data={"csrf": csrf_of(admin), "action": "cancel", "ids": str(job), "state": "gone"},
        follow_redirects=False,
    )
    assert answer.status_code == 400
    assert broker.get_job(job).state == "queued"


def test_bulk_needs_admin(client: UiClient, broker: Broker) -> None:
    job = broker.enqueue("k").id
    sign_in(client, SUBMIT)
    assert client.get("/ui/jobs/bulk", params={"action": "cancel"}).status_code == 403
    answer = client.post(
        "/ui/jobs/bulk",
        data={"csrf": csrf_of(client), "action": "cancel", "ids": str(job)},
        follow_redirects=False,
    )
    assert answer.status_code == 403
    assert broker.get_job(job).state == "queued"


def test_overview_counts_recent_outcomes_and_queue_controls(
    admin: UiClient, broker: Broker, conn: psycopg.Connection[Any]
) -> None:
    ok = broker.enqueue("k", queue="qa")
    [held] = broker.claim(["qa"], 1, "h:1")
    broker.complete(held)
    fail_job(broker, broker.enqueue("k", queue="qa").id, "x", queue="qa")
    for _ in range(4):
        broker.enqueue("k", queue="qa")
    assert held.job_id == ok.id
    page = admin.get("/ui").text
    row = re.search(r'<tr data-queue="qa">(.*?)</tr>', page, re.S)
    assert row is not None
    counts = dict(re.findall(r'data-count="([\w-]+)">(?:<a [^>]*>)?(\d+)', row.group(1)))
    assert counts["available"] == "4"
    assert counts["succeeded"] == "1"
    assert counts["failed"] == "1"
    assert counts["recent-succeeded"] == "1"
    assert counts["recent-failed"] == "1"
    # An hour later (database time) the success is no longer recent.
    advance_db_time(conn, 3700)
    row = re.search(r'<tr data-queue="qa">(.*?)</tr>', admin.get("/ui").text, re.S)
    assert row is not None
    counts = dict(re.findall(r'data-count="([\w-]+)">(?:<a [^>]*>)?(\d+)', row.group(1)))
    assert counts["recent-succeeded"] == "0"
    assert counts["succeeded"] == "1"
    # Pause and resume from the overview.
    csrf = csrf_of(admin)
    assert admin.post("/ui/queues/qa/pause", data={"csrf": csrf}).status_code == 200
    [qa] = [q for q in broker.run(views.queues()) if q.queue == "qa"]
    assert qa.paused
    page = admin.get("/ui").text
    assert 'action="/ui/queues/qa/resume"' in page
    assert admin.post("/ui/queues/qa/resume", data={"csrf": csrf}).status_code == 200
    [qa] = [q for q in broker.run(views.queues()) if q.queue == "qa"]
    assert not qa.paused


def test_schedules_page_triggers_a_schedule(admin: UiClient, broker: Broker) -> None:
    broker.run(sch.put(sch.ScheduleSpec(name="nightly", kind="report", every=3600), None))
    page = admin.get("/ui/schedules").text
    assert 'data-schedule="nightly"' in page
    answer = admin.post(
        "/ui/schedules/nightly/trigger", data={"csrf": csrf_of(admin)}, follow_redirects=False
    )
    assert answer.status_code == 303
    job_id = int(re.search(r"n=(\d+)", answer.headers["location"]).group(1))  # type: ignore[union-attr]
    assert broker.get_job(job_id).kind == "report"
    missing = admin.post("/ui/schedules/nope/trigger", data={"csrf": csrf_of(admin)})
    assert missing.status_code == 404


def test_groups_page_lists_groups_with_counts(admin: UiClient, broker: Broker) -> None:
    broker.enqueue("k", group="alpha")
    broker.enqueue("k", group="alpha")
    broker.cancel(broker.enqueue("k", group="beta").id)
    page = admin.get("/ui/groups").text
    assert page.index(">alpha</a>") < page.index(">beta</a>")
    one = admin.get("/ui/groups", params={"group": "alpha"}).text
    assert re.search(r">alpha</a></td>\s*<td class=\"n\">0</td>\s*<td class=\"n\">2</td>", one)


def test_workers_page_shows_host_last_seen_skew_and_jobs_held(
    admin: UiClient, broker: Broker, conn: psycopg.Connection[Any]
) -> None:
    conn.execute(
        "INSERT INTO broker.workers (worker_id, host_id, seq, hostname, pid, queues, "
        "concurrency, clock_skew_seconds) VALUES "
        "('00000000-0000-0000-0000-000000000001:1', '00000000-0000-0000-0000-000000000001', "
        "1, 'box-7', 4242, ARRAY['default'], 4, 12.5)"
    )
    page = admin.get("/ui/workers").text
    assert "box-7" in page
    assert "12.5s" in page
    assert '<td class="error">12.5s</td>' in page  # past the 3 s tolerance


def test_the_live_log_streams_lines_then_the_end(admin: UiClient, broker: Broker) -> None:
    job = broker.enqueue("k")
    [held] = broker.claim(["default"], 1, "h:1")
    broker.append_logs([(held, "one <i>"), (held, "two")])
    broker.complete(held)
    with admin.stream("GET", f"/ui/jobs/{job.id}/log") as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        body = "".join(answer.iter_text())
    assert body.count("event: log") == 2
    assert '"line":"one <i>"' in body  # JSON data, made text by ui.js (textContent)
    assert "event: end" in body
    for bad in ("x", "-1", str(2**63)):
        assert admin.get(f"/ui/jobs/{job.id}/log", params={"after": bad}).status_code == 400


def test_v1_and_the_openapi_schema_are_unchanged(client: UiClient) -> None:
    schema = client.get("/schema/openapi.json", headers=bearer(ADMIN)).json()
    assert schema["paths"]
    assert not [p for p in schema["paths"] if p.startswith("/ui")]
    missing = client.get("/v1/jobs/424242", headers=bearer(ADMIN))
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert "content-security-policy" not in missing.headers


def test_static_files_are_served_without_a_session(client: UiClient) -> None:
    from api.ui import HERE, HTMX_VERSION

    answer = client.get(f"/ui/static/htmx-{HTMX_VERSION}.min.js", follow_redirects=False)
    assert answer.status_code == 200
    assert answer.content == (HERE / "static" / f"htmx-{HTMX_VERSION}.min.js").read_bytes()
    assert client.get("/ui/static/../session.py").status_code in (400, 404)
    # The vendored file is the one the README pins.
    pinned = re.search(r"sha256\s+([0-9a-f]{64})", (HERE / "static" / "README.md").read_text())
    assert pinned is not None
    assert hashlib.sha256(answer.content).hexdigest() == pinned.group(1)
    # Revalidated, while pages (live state, the CSRF token) are never stored.
    assert answer.headers["cache-control"] == "no-cache"
    assert client.get("/ui/login").headers["cache-control"] == "no-store"
