"""The jobs resource through Litestar's test client, against the real test database."""

from __future__ import annotations

from typing import Any

import psycopg
from litestar.testing import TestClient

from tests.api.conftest import ADMIN, SUBMIT, bearer

Client = TestClient  # type: ignore[type-arg]
H = bearer(SUBMIT)


def enqueue(client: Client, **body: Any) -> dict[str, Any]:
    r = client.post("/v1/jobs", json={"kind": "send_email", **body}, headers=H)
    assert r.status_code == 201, r.text
    return dict(r.json())


def assert_problem(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = dict(r.json())
    assert body["status"] == status
    assert body["title"] and body["detail"] and body["type"].startswith("https://")
    text = r.text.lower()
    assert "traceback" not in text and "select " not in text and "psycopg" not in text
    return body


def test_enqueue_returns_the_created_job(client: Client, conn: psycopg.Connection[Any]) -> None:
    r = client.post(
        "/v1/jobs",
        json={
            "kind": "send_email",
            "args": {"to": "a@example.com"},
            "queue": "emails",
            "priority": 5,
            "delay": 60,
            "max_attempts": 3,
            "timeout": 30,
            "subject_key": "user:1",
            "tags": ["welcome", "eu"],
        },
        headers=H,
    )
    assert r.status_code == 201
    job = r.json()
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert "idempotent-replayed" not in r.headers
    assert job["kind"] == "send_email" and job["queue"] == "emails"
    assert job["args"] == {"to": "a@example.com"}
    assert (job["priority"], job["max_attempts"], job["timeout"]) == (5, 3, 30.0)
    assert job["state"] == "queued" and job["tags"] == ["welcome", "eu"]
    assert job["run_at"] > job["created_at"]
    row = conn.execute("SELECT kind, queue, state FROM broker.jobs WHERE id = %s", (job["id"],))
    assert row.fetchone() == ("send_email", "emails", "queued")


def test_enqueue_validation_names_the_field(client: Client) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"kind": "bad kind"}, "kind"),
        ({"kind": ""}, "kind"),
        ({"kind": "k", "queue": "no/slash"}, "queue"),
        ({"kind": "k", "priority": 2**31}, "priority"),  # the integer range (broker.spec)
        ({"kind": "k", "max_attempts": 0}, "max_attempts"),
        ({"kind": "k", "delay": -1}, "delay"),
        ({"kind": "k", "timeout": 0}, "timeout"),
        ({"kind": "k", "args": [1, 2]}, "args"),
        ({"kind": "k", "run_at": "2030-01-01T00:00:00"}, "run_at"),
        ({"kind": "k", "tags": ["x" * 65]}, "tags"),
        ({"kind": "k", "surprise": 1}, "surprise"),
        ({"args": {}}, "kind"),
    ]
    for body, field in cases:
        problem = assert_problem(client.post("/v1/jobs", json=body, headers=H), 400)
        assert field in str(problem), (body, problem)


def test_enqueue_rejections_from_the_database_are_422(client: Client) -> None:
    problem = assert_problem(
        client.post(
            "/v1/jobs",
            json={"kind": "k", "run_at": "2030-01-01T00:00:00Z", "delay": 5},
            headers=H,
        ),
        422,
    )
    assert "run_at or delay" in problem["detail"]


def test_malformed_json_is_400(client: Client) -> None:
    r = client.post(
        "/v1/jobs", content=b"{not json", headers={**H, "content-type": "application/json"}
    )
    assert_problem(r, 400)


def test_body_over_the_limit_is_413(client: Client) -> None:
    big = {"kind": "k", "args": {"blob": "x" * (80 * 1024)}}
    assert_problem(client.post("/v1/jobs", json=big, headers=H), 413)
    assert_problem(client.post("/v1/jobs/batch", json={"jobs": [big]}, headers=H), 413)


def test_get_job_and_404(client: Client) -> None:
    job = enqueue(client)
    r = client.get(f"/v1/jobs/{job['id']}", headers=H)
    # The enqueue's answer is the job plus its warnings (no worker runs here).
    assert job.pop("warnings") == ["no live worker serves queue 'default'"]
    assert r.status_code == 200 and r.json() == job
    assert_problem(client.get("/v1/jobs/999999", headers=H), 404)
    assert_problem(client.get("/v1/jobs/0", headers=H), 400)
    assert_problem(client.get(f"/v1/jobs/{2**63}", headers=H), 400)


def test_batch_is_one_transaction(client: Client, conn: psycopg.Connection[Any]) -> None:
    jobs = [{"kind": "k", "args": {"n": n}, "queue": f"q{n % 3}"} for n in range(50)]
    r = client.post("/v1/jobs/batch", json={"jobs": jobs}, headers=H)
    assert r.status_code == 201, r.text
    ids = [j["id"] for j in r.json()["jobs"]]
    assert len(ids) == 50 and all(j["created"] for j in r.json()["jobs"])
    rows = conn.execute(
        "SELECT id, args->>'n' FROM broker.jobs WHERE id = ANY(%s) ORDER BY id", (ids,)
    ).fetchall()
    assert [int(n) for _, n in rows] == list(range(50))

    # One bad job in the batch: nothing of it is created.
    before = conn.execute("SELECT count(*) FROM broker.jobs").fetchone()
    bad = [*jobs[:10], {"kind": "k", "run_at": "2030-01-01T00:00:00Z", "delay": 1}]
    assert_problem(client.post("/v1/jobs/batch", json={"jobs": bad}, headers=H), 422)
    assert conn.execute("SELECT count(*) FROM broker.jobs").fetchone() == before

    assert_problem(client.post("/v1/jobs/batch", json={"jobs": []}, headers=H), 400)
    assert_problem(
        client.post(
            "/v1/jobs/batch", json={"jobs": jobs[:1]}, headers={**H, "Idempotency-Key": "k1"}
        ),
        422,
    )


def test_list_filters_and_keyset_pages(client: Client) -> None:
    created = [
        enqueue(client, queue="a" if n % 2 else "b", tags=["even"] if n % 2 == 0 else [])
        for n in range(7)
    ]
    client.post("/v1/jobs", json={"kind": "other"}, headers=H)
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3, "kind": "send_email"}
        if cursor:
            params["cursor"] = cursor
        r = client.get("/v1/jobs", params=params, headers=H)
        assert r.status_code == 200, r.text
        page = r.json()
        seen += [j["id"] for j in page["jobs"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted((j["id"] for j in created), reverse=True)
    assert pages == 3

    by_queue = client.get("/v1/jobs", params={"queue": "a"}, headers=H).json()["jobs"]
    assert {j["id"] for j in by_queue} == {j["id"] for j in created if j["queue"] == "a"}
    tagged = client.get("/v1/jobs", params={"tag": "even"}, headers=H).json()["jobs"]
    assert {j["id"] for j in tagged} == {j["id"] for n, j in enumerate(created) if n % 2 == 0}
    queued = client.get("/v1/jobs", params={"state": "queued"}, headers=H).json()["jobs"]
    assert len(queued) == 8
    assert client.get("/v1/jobs", params={"state": "failed"}, headers=H).json()["jobs"] == []
    mid = created[3]["created_at"]
    after = client.get("/v1/jobs", params={"created_after": mid}, headers=H).json()["jobs"]
    assert all(j["created_at"] >= mid for j in after) and after
    none = client.get(
        "/v1/jobs", params={"created_before": "2000-01-01T00:00:00Z"}, headers=H
    ).json()
    assert none == {"jobs": [], "next_cursor": None}

    assert_problem(client.get("/v1/jobs", params={"limit": 501}, headers=H), 400)
    assert_problem(client.get("/v1/jobs", params={"state": "weird"}, headers=H), 400)
    assert_problem(client.get("/v1/jobs", params={"cursor": "garbage!"}, headers=H), 400)
    assert_problem(
        client.get("/v1/jobs", params={"created_after": "2020-01-01T00:00:00"}, headers=H), 400
    )


def test_cancel_queued_running_finished(client: Client, conn: psycopg.Connection[Any]) -> None:
    queued = enqueue(client)
    r = client.post(f"/v1/jobs/{queued['id']}/cancel", headers=H)
    assert r.status_code == 200 and r.json() == {"id": queued["id"], "state": "cancelled"}
    assert_problem(client.post(f"/v1/jobs/{queued['id']}/cancel", headers=H), 409)

    running = enqueue(client, queue="run")
    conn.execute("LISTEN broker_cancel")
    leases = client.post(
        "/v1/leases", json={"worker_id": "w:1", "queues": ["run"]}, headers=bearer(ADMIN)
    ).json()["leases"]
    assert [lease["job_id"] for lease in leases] == [running["id"]]
    r = client.post(f"/v1/jobs/{running['id']}/cancel", headers=H)
    assert r.status_code == 202 and r.json()["state"] == "running"
    notices = [n.payload for n in conn.notifies(timeout=5, stop_after=1)]
    assert notices == [str(running["id"])]
    job = client.get(f"/v1/jobs/{running['id']}", headers=H).json()
    assert job["cancel_requested_at"] is not None

    assert_problem(client.post("/v1/jobs/424242/cancel", headers=H), 404)


def test_retry_failed_job(client: Client) -> None:
    job = enqueue(client, max_attempts=1, queue="r")
    assert_problem(client.post(f"/v1/jobs/{job['id']}/retry", headers=H), 409)
    work = bearer(ADMIN)
    lease = client.post("/v1/leases", json={"worker_id": "w:1", "queues": ["r"]}, headers=work)
    epoch = lease.json()["leases"][0]["lease_epoch"]
    r = client.post(
        f"/v1/jobs/{job['id']}/fail",
        json={"worker_id": "w:1", "lease_epoch": epoch, "error": "boom"},
        headers=work,
    )
    assert r.json()["state"] == "failed"
    r = client.post(f"/v1/jobs/{job['id']}/retry", headers=H)
    assert r.status_code == 200 and r.json() == {"id": job["id"], "state": "queued"}
    assert_problem(client.post("/v1/jobs/424242/retry", headers=H), 404)


def test_events_and_logs(client: Client, conn: psycopg.Connection[Any]) -> None:
    job = enqueue(client, queue="ev")
    work = bearer(ADMIN)
    lease = client.post("/v1/leases", json={"worker_id": "w:1", "queues": ["ev"]}, headers=work)
    epoch = lease.json()["leases"][0]["lease_epoch"]
    conn.execute(
        "INSERT INTO broker.job_logs (job_id, epoch, line) VALUES (%s, %s, 'one'), (%s, %s, 'two')",
        (job["id"], epoch, job["id"], epoch),
    )
    client.post(
        f"/v1/jobs/{job['id']}/complete",
        json={"worker_id": "w:1", "lease_epoch": epoch, "result": {"ok": True}},
        headers=work,
    )
    events = client.get(f"/v1/jobs/{job['id']}/events", headers=H).json()["events"]
    assert [e["event"] for e in events] == ["enqueued", "claimed", "succeeded"]
    assert events[1]["epoch"] == epoch and events[1]["worker_id"] == "w:1"
    later = client.get(
        f"/v1/jobs/{job['id']}/events", params={"after": events[0]["id"]}, headers=H
    ).json()["events"]
    assert [e["event"] for e in later] == ["claimed", "succeeded"]

    page = client.get(f"/v1/jobs/{job['id']}/logs", headers=H).json()
    assert [line["line"] for line in page["lines"]] == ["one", "two"]
    rest = client.get(
        f"/v1/jobs/{job['id']}/logs", params={"after": page["next_after"]}, headers=H
    ).json()
    assert rest == {"lines": [], "next_after": page["next_after"]}
    assert_problem(client.get("/v1/jobs/777/events", headers=H), 404)
    assert_problem(client.get("/v1/jobs/777/logs", headers=H), 404)

    # A finished job's follow stream gives its lines and ends at once.
    with client.stream("GET", f"/v1/jobs/{job['id']}/logs?follow=true", headers=H) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        text = "".join(r.iter_text())
    assert text.count("event: log") == 2 and "event: end" in text and "succeeded" in text


def test_operator_views(client: Client, conn: psycopg.Connection[Any]) -> None:
    enqueue(client, queue="q1")
    enqueue(client, queue="q1", delay=3600)
    enqueue(client, queue="q2")
    admin = bearer(ADMIN)
    conn.execute("SELECT broker.pause_queue('q2')")
    queues = {q["queue"]: q for q in client.get("/v1/queues", headers=admin).json()["queues"]}
    assert queues["q1"]["queued"] == 2 and queues["q1"]["scheduled"] == 1
    assert queues["q2"]["available"] == 1
    assert (queues["q1"]["paused"], queues["q2"]["paused"]) == (False, True)

    stats = client.get("/v1/stats", headers=admin).json()
    assert (stats["queued"], stats["total"], stats["queues"]) == (3, 3, 2)

    host = "6f1c9a44-0000-4000-8000-000000000001"
    conn.execute(
        """INSERT INTO broker.workers (worker_id, host_id, seq, hostname, pid, concurrency,
                                       clock_skew_seconds, last_seen)
           VALUES (%s, %s, 1, 'box', 10, 4, 0.5, now()),
                  (%s, %s, 2, 'box', 11, 4, -7.0, now()),
                  ('other:1', '6f1c9a44-0000-4000-8000-000000000002', 1, 'far', 12, 2, NULL,
                   now() - interval '1 hour')""",
        (f"{host}:1", host, f"{host}:2", host),
    )
    body = client.get("/v1/workers", headers=admin).json()
    workers = {w["worker_id"]: w for w in body["workers"]}
    assert workers[f"{host}:1"]["alive"] and not workers[f"{host}:1"]["clock_skew_exceeded"]
    assert workers[f"{host}:2"]["clock_skew_exceeded"]
    assert not workers["other:1"]["alive"] and workers["other:1"]["status"] == "gone"
    assert workers[f"{host}:2"]["status"] == "alive"
    hosts = {h["hostname"]: h for h in body["hosts"]}
    assert (hosts["box"]["workers"], hosts["box"]["alive"], hosts["box"]["concurrency"]) == (
        2,
        2,
        8,
    )
    assert hosts["box"]["max_abs_clock_skew_seconds"] == 7.0 and hosts["box"]["clock_skew_exceeded"]
    assert hosts["far"]["alive"] == 0
    assert client.get("/v1/stats", headers=admin).json()["workers_alive"] == 2


def test_health_and_metrics(client: Client, empty_db_url: str) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ok"

    enqueue(client, queue="m")
    text = client.get("/metrics", headers=bearer(ADMIN)).text
    assert 'broker_jobs{queue="m",state="queued"} 1.0' in text
    assert 'broker_api_jobs_enqueued_total{queue="m"} 1.0' in text
    assert "broker_api_claim_duration_seconds_count 0.0" in text
    client.post("/v1/leases", json={"worker_id": "w:1", "queues": ["m"]}, headers=bearer(ADMIN))
    # The database gauges are cached for a moment (tests/api/test_metrics.py); the counters
    # are not.
    client.app.state.runtime.metrics.database.ttl = 0
    text = client.get("/metrics", headers=bearer(ADMIN)).text
    assert "broker_api_claim_duration_seconds_count 1.0" in text
    assert 'broker_jobs{queue="m",state="running"} 1.0' in text


def test_readyz_on_an_unmigrated_database(empty_db_url: str) -> None:
    from api.app import create_app
    from api.config import ApiSettings
    from broker.config import Settings

    app = create_app(
        Settings(database_url=empty_db_url), api_settings=ApiSettings(auth_disabled=True)
    )
    with TestClient(app) as c:
        problem = assert_problem(c.get("/readyz"), 503)
        assert "not been migrated" in problem["detail"]
        assert problem["detail"].endswith("run `broker migrate`")
        assert c.get("/healthz").status_code == 200
        listed = assert_problem(c.get("/v1/jobs"), 503)
        assert listed["type"].endswith("/not-migrated")
        assert listed["detail"] == "the database is not migrated: run `broker migrate`"


def test_readyz_when_the_database_is_unreachable() -> None:
    from api.app import create_app
    from api.config import ApiSettings
    from broker.config import Settings

    # Port 1 on loopback refuses connections at once.
    url = "postgresql://postgres@127.0.0.1:1/none?connect_timeout=1"
    app = create_app(
        Settings(database_url=url), api_settings=ApiSettings(auth_disabled=True, db_wait=1)
    )
    with TestClient(app) as c:
        assert c.get("/healthz").status_code == 200
        problem = assert_problem(c.get("/readyz"), 503)
        assert "unreachable" in problem["detail"]
