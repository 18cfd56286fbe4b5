"""GET /v1/groups/{group}: a group's jobs per state, read from jobs_group_idx."""

from __future__ import annotations

from typing import Any

import psycopg
from litestar.testing import TestClient

from tests.api.conftest import SUBMIT, WORK, bearer


def test_a_group_counts_its_jobs_per_state(
    client: TestClient,  # type: ignore[type-arg]
    conn: psycopg.Connection[Any],
) -> None:
    headers = bearer(SUBMIT)
    made = client.post("/v1/jobs", json={"kind": "k", "group": "import-7"}, headers=headers)
    assert made.status_code == 201, made.text
    parent = made.json()["id"]
    child = client.post(
        "/v1/jobs",
        json={"kind": "k", "group": "import-7", "depends_on": [parent], "start_within": 60},
        headers=headers,
    )
    assert child.status_code == 201, child.text
    body = child.json()
    assert (body["state"], body["depends_on"], body["group"]) == ("waiting", [parent], "import-7")
    assert body["deadline"] is not None and body["concurrency_key"] is None
    r = client.get("/v1/groups/import-7", headers=headers)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "group": "import-7",
        "counts": {
            "waiting": 1,
            "queued": 1,
            "running": 0,
            "succeeded": 0,
            "failed": 0,
            "cancelled": 0,
        },
        "total": 2,
    }
    empty = client.get("/v1/groups/nobody", headers=headers).json()
    assert empty["total"] == 0 and set(empty["counts"].values()) == {0}
    plan = conn.execute(
        "EXPLAIN SELECT state, count(*) FROM broker.jobs WHERE \"group\" = 'import-7'"
        " GROUP BY state"
    ).fetchall()
    assert "jobs_group_idx" in " ".join(str(r[0]) for r in plan)


def test_group_names_and_scopes(client: TestClient) -> None:  # type: ignore[type-arg]
    assert client.get("/v1/groups/two%20words", headers=bearer(SUBMIT)).status_code == 400
    assert client.get("/v1/groups/" + "g" * 129, headers=bearer(SUBMIT)).status_code == 400
    assert client.get("/v1/groups/g", headers=bearer(WORK)).status_code == 403
    assert client.get("/v1/groups/g").status_code == 401


def test_an_unknown_dependency_is_a_422_problem(client: TestClient) -> None:  # type: ignore[type-arg]
    r = client.post("/v1/jobs", json={"kind": "k", "depends_on": [987654]}, headers=bearer(SUBMIT))
    assert r.status_code == 422
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "depends_on names job 987654, which does not exist" in r.json()["detail"]
    batch = client.post(
        "/v1/jobs/batch",
        json={"jobs": [{"kind": "a"}, {"kind": "b", "depends_on": [987654]}]},
        headers=bearer(SUBMIT),
    )
    assert batch.status_code == 422 and "job 2: depends_on" in batch.json()["detail"]
