"""The HTTP worker protocol end to end: claim, heartbeat, complete, fail, stale epochs."""

from __future__ import annotations

from typing import Any

import psycopg
from litestar.testing import TestClient

from broker import Broker
from tests.api.conftest import SUBMIT, WORK, bearer

Client = TestClient  # type: ignore[type-arg]
W = bearer(WORK)


def claim(client: Client, queue: str, limit: int = 1, **extra: Any) -> list[dict[str, Any]]:
    r = client.post(
        "/v1/leases",
        json={"worker_id": "http:1", "queues": [queue], "limit": limit, **extra},
        headers=W,
    )
    assert r.status_code == 200, r.text
    return list(r.json()["leases"])


def test_claim_heartbeat_complete(client: Client, conn: psycopg.Connection[Any]) -> None:
    ids = [
        client.post(
            "/v1/jobs",
            json={"kind": "resize", "args": {"n": n}, "queue": "img", "priority": n},
            headers=bearer(SUBMIT),
        ).json()["id"]
        for n in range(3)
    ]
    assert claim(client, "nothing-here") == []
    leases = claim(client, "img", limit=2, lease_ttl=30)
    assert [lease["job_id"] for lease in leases] == [ids[2], ids[1]]  # priority first
    held = leases[0]
    assert held["lease_epoch"] == 1 and held["attempt"] == 1 and held["lease_ttl"] == 30
    assert held["args"] == {"n": 2} and held["kind"] == "resize"

    before = conn.execute(
        "SELECT lease_expires_at FROM broker.jobs WHERE id = %s", (held["job_id"],)
    ).fetchone()
    r = client.post(
        f"/v1/jobs/{held['job_id']}/heartbeat",
        json={"worker_id": "http:1", "lease_epoch": held["lease_epoch"], "lease_ttl": 60},
        headers=W,
    )
    assert r.status_code == 200
    assert r.json() == {"job_id": held["job_id"], "lease_epoch": 1, "cancel_requested": False}
    after = conn.execute(
        "SELECT lease_expires_at FROM broker.jobs WHERE id = %s", (held["job_id"],)
    ).fetchone()
    assert before is not None and after is not None and after[0] > before[0]

    r = client.post(
        f"/v1/jobs/{held['job_id']}/complete",
        json={"worker_id": "http:1", "lease_epoch": 1, "result": {"px": 640}},
        headers=W,
    )
    assert r.status_code == 200 and r.json()["state"] == "succeeded"
    job = client.get(f"/v1/jobs/{held['job_id']}", headers=bearer(SUBMIT)).json()
    assert job["state"] == "succeeded" and job["result"] == {"px": 640}


def test_stale_epoch_gets_409_and_is_recorded(
    client: Client, conn: psycopg.Connection[Any], broker: Broker
) -> None:
    job_id = client.post(
        "/v1/jobs", json={"kind": "k", "queue": "st"}, headers=bearer(SUBMIT)
    ).json()["id"]
    first = claim(client, "st")[0]
    # The lease expires (moved into the past on the database clock) and is reaped, then a
    # second worker claims the job: epoch 2 owns it now.
    conn.execute(
        "UPDATE broker.jobs SET lease_expires_at = now() - interval '1 s' WHERE id = %s",
        (job_id,),
    )
    assert [r.job_id for r in broker.reap()] == [job_id]
    conn.execute("UPDATE broker.jobs SET run_at = now() WHERE id = %s", (job_id,))
    second = claim(client, "st")[0]
    assert second["lease_epoch"] == first["lease_epoch"] + 1

    stale = {"worker_id": "http:1", "lease_epoch": first["lease_epoch"]}
    for path, body in [
        ("heartbeat", stale),
        ("complete", {**stale, "result": 1}),
        ("fail", {**stale, "error": "late"}),
    ]:
        r = client.post(f"/v1/jobs/{job_id}/{path}", json=body, headers=W)
        assert r.status_code == 409, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["type"].endswith("lease-lost")
    rejected = conn.execute(
        "SELECT detail->>'write' FROM broker.job_events "
        "WHERE job_id = %s AND event = 'stale_write_rejected' ORDER BY id",
        (job_id,),
    ).fetchall()
    assert [r[0] for r in rejected] == ["heartbeat", "complete", "fail"]
    # The live lease is untouched and can still finish the job.
    r = client.post(
        f"/v1/jobs/{job_id}/complete",
        json={"worker_id": "http:2", "lease_epoch": second["lease_epoch"]},
        headers=W,
    )
    assert r.status_code == 200
    metrics = client.get("/metrics", headers=bearer("admin-secret-token")).text
    assert 'broker_api_lease_lost_total{write="complete"} 1.0' in metrics


def test_fail_retries_then_fails(client: Client) -> None:
    job_id = client.post(
        "/v1/jobs", json={"kind": "k", "queue": "f", "max_attempts": 2}, headers=bearer(SUBMIT)
    ).json()["id"]
    held = claim(client, "f")[0]
    r = client.post(
        f"/v1/jobs/{job_id}/fail",
        json={"worker_id": "http:1", "lease_epoch": held["lease_epoch"], "error": "x", "delay": 0},
        headers=W,
    )
    assert r.status_code == 200 and r.json()["state"] == "queued"
    held = claim(client, "f")[0]
    assert held["attempt"] == 2
    r = client.post(
        f"/v1/jobs/{job_id}/fail",
        json={"worker_id": "http:1", "lease_epoch": held["lease_epoch"], "error": "again"},
        headers=W,
    )
    assert r.json()["state"] == "failed"
    job = client.get(f"/v1/jobs/{job_id}", headers=bearer(SUBMIT)).json()
    assert job["state"] == "failed" and job["last_error"] == "again"


def test_heartbeat_reports_cancel_request(client: Client) -> None:
    job_id = client.post(
        "/v1/jobs", json={"kind": "k", "queue": "c"}, headers=bearer(SUBMIT)
    ).json()["id"]
    held = claim(client, "c")[0]
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=bearer(SUBMIT)).status_code == 202
    r = client.post(
        f"/v1/jobs/{job_id}/heartbeat",
        json={"worker_id": "http:1", "lease_epoch": held["lease_epoch"]},
        headers=W,
    )
    assert r.status_code == 200 and r.json()["cancel_requested"] is True
    r = client.post(
        f"/v1/jobs/{job_id}/fail",
        json={"worker_id": "http:1", "lease_epoch": held["lease_epoch"], "error": "stopped"},
        headers=W,
    )
    assert r.json()["state"] == "cancelled"


def test_protocol_validation(client: Client) -> None:
    bad = [
        ("/v1/leases", {"worker_id": "w", "queues": []}),
        ("/v1/leases", {"worker_id": "w", "queues": ["q"], "limit": 0}),
        ("/v1/leases", {"worker_id": "w", "queues": ["q"], "lease_ttl": 0}),
        ("/v1/leases", {"worker_id": "", "queues": ["q"]}),
        ("/v1/jobs/1/heartbeat", {"worker_id": "w"}),
        ("/v1/jobs/1/fail", {"worker_id": "w", "lease_epoch": 1}),
        ("/v1/jobs/1/complete", {"worker_id": "w", "lease_epoch": -1}),
    ]
    for path, body in bad:
        r = client.post(path, json=body, headers=W)
        assert r.status_code == 400, (path, body, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
    # A heartbeat for a job that does not exist is a lost lease, not a server error.
    r = client.post(
        "/v1/jobs/99999/heartbeat", json={"worker_id": "w", "lease_epoch": 1}, headers=W
    )
    assert r.status_code == 409


def test_logs_over_http_are_fenced(client: Client) -> None:
    job_id = client.post(
        "/v1/jobs", json={"kind": "k", "queue": "lg"}, headers=bearer(SUBMIT)
    ).json()["id"]
    held = claim(client, "lg")[0]
    fence = {"worker_id": "http:1", "lease_epoch": held["lease_epoch"]}
    r = client.post(f"/v1/jobs/{job_id}/logs", json={**fence, "lines": ["a", "b"]}, headers=W)
    assert r.status_code == 200 and r.json() == {"job_id": job_id, "stored": 2}
    stale = {**fence, "lease_epoch": held["lease_epoch"] + 1}
    r = client.post(f"/v1/jobs/{job_id}/logs", json={**stale, "lines": ["c"]}, headers=W)
    assert r.status_code == 409 and r.json()["type"].endswith("lease-lost")
    assert (
        client.post(f"/v1/jobs/{job_id}/logs", json={**fence, "lines": []}, headers=W).status_code
        == 400
    )
    lines = client.get(f"/v1/jobs/{job_id}/logs", headers=bearer(SUBMIT)).json()["lines"]
    assert [line["line"] for line in lines] == ["a", "b"]


def test_snooze_requeues_without_an_attempt(client: Client) -> None:
    job_id = client.post(
        "/v1/jobs", json={"kind": "k", "queue": "s"}, headers=bearer(SUBMIT)
    ).json()["id"]
    held = claim(client, "s")[0]
    body = {"worker_id": "http:1", "lease_epoch": held["lease_epoch"], "delay": 0}
    r = client.post(f"/v1/jobs/{job_id}/snooze", json={**body, "max_snoozes": 1}, headers=W)
    assert r.status_code == 200 and r.json()["state"] == "queued", r.text
    assert client.post(f"/v1/jobs/{job_id}/snooze", json=body, headers=W).status_code == 409
    held = claim(client, "s")[0]
    assert held["attempt"] == 1
    body["lease_epoch"] = held["lease_epoch"]
    r = client.post(f"/v1/jobs/{job_id}/snooze", json={**body, "max_snoozes": 1}, headers=W)
    assert r.json()["state"] == "failed"
    job = client.get(f"/v1/jobs/{job_id}", headers=bearer(SUBMIT)).json()
    assert job["last_error"] == "snoozed 1 times (max_snoozes); not snoozed again"
    bad = {**body, "delay": -1}
    assert client.post(f"/v1/jobs/{job_id}/snooze", json=bad, headers=W).status_code == 400
