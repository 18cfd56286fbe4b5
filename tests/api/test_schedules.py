"""The schedules resource through Litestar's test client, against the real test database:
create or replace, list with last and next run, pause, resume, trigger, delete, and
problem+json 4xx (never 5xx) for bad input and unknown names."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from litestar.testing import TestClient

from tests.api.conftest import ADMIN, SUBMIT, bearer
from tests.api.test_jobs import assert_problem

Client = TestClient  # type: ignore[type-arg]
H = bearer(ADMIN)


def create(client: Client, **body: Any) -> Any:
    return client.post("/v1/schedules", json={"name": "n", "kind": "report", **body}, headers=H)


def test_create_list_get_and_replace(client: Client) -> None:
    r = create(client, cron="*/5 * * * *", timezone="Europe/Paris", args={"x": 1})
    assert r.status_code == 201, r.text
    assert r.headers["location"] == "/v1/schedules/n"
    made = r.json()
    assert made["next_run_at"] and made["last_run_at"] is None
    assert (made["cron"], made["timezone"], made["every"]) == ("*/5 * * * *", "Europe/Paris", None)
    assert made["orphaned"] is True and made["declared"] is False  # no worker runs `report`
    again = create(client, cron="*/5 * * * *", timezone="Europe/Paris", args={"x": 2})
    assert again.status_code == 200, again.text
    assert again.json()["args"] == {"x": 2}
    assert again.json()["next_run_at"] == made["next_run_at"]
    listed = client.get("/v1/schedules", headers=H).json()["schedules"]
    assert [s["name"] for s in listed] == ["n"]
    got = client.get("/v1/schedules/n", headers=H)
    assert got.status_code == 200 and got.json()["args"] == {"x": 2}


def test_pause_resume_trigger_delete(client: Client, conn: psycopg.Connection[Any]) -> None:
    assert create(client, every=60).status_code == 201
    paused = client.post("/v1/schedules/n/pause", headers=H)
    assert paused.status_code == 200 and paused.json()["paused"] is True
    fired = client.post("/v1/schedules/n/trigger", headers=H)
    assert fired.status_code == 201, fired.text
    job_id = fired.json()["job_id"]
    assert fired.headers["location"] == f"/v1/jobs/{job_id}"
    [(key,)] = conn.execute("SELECT idempotency_key FROM broker.jobs").fetchall()
    assert str(key).startswith("schedule:n:manual:")
    resumed = client.post("/v1/schedules/n/resume", headers=H)
    assert resumed.status_code == 200 and resumed.json()["paused"] is False
    assert resumed.json()["last_job_id"] == job_id
    assert client.delete("/v1/schedules/n", headers=H).status_code == 204
    assert_problem(client.get("/v1/schedules/n", headers=H), 404)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"cron": "61 * * * *"}, 422),
        ({"cron": "* * * *"}, 422),
        ({"cron": "* * * * *", "timezone": "Mars/Olympus"}, 422),
        ({"every": 0.5}, 400),
        ({"every": 5, "cron": "* * * * *"}, 422),
        ({}, 422),
        ({"every": 5, "name": "bad name"}, 400),
        ({"every": 5, "backfill": 0}, 400),
        ({"every": 5, "args": []}, 400),
        ({"every": 5, "unknown": 1}, 400),
        ({"every": 5, "timezone": "nul\x00"}, 422),
        ({"cron": "\x00 * * * *"}, 422),
    ],
)
def test_bad_schedules_are_problem_json_4xx(
    client: Client, conn: psycopg.Connection[Any], body: dict[str, Any], status: int
) -> None:
    assert_problem(create(client, **body), status)
    assert conn.execute("SELECT count(*) FROM broker.schedules").fetchone() == (0,)


@pytest.mark.parametrize("action", ["pause", "resume", "trigger"])
def test_unknown_names_are_404(client: Client, action: str) -> None:
    body = assert_problem(client.post(f"/v1/schedules/ghost/{action}", headers=H), 404)
    assert "ghost" in body["detail"]
    assert_problem(client.post(f"/v1/schedules/bad%20name/{action}", headers=H), 404)


def test_unknown_name_get_and_delete_are_404(client: Client) -> None:
    assert_problem(client.get("/v1/schedules/ghost", headers=H), 404)
    assert_problem(client.delete("/v1/schedules/ghost", headers=H), 404)


def test_schedules_need_the_admin_scope(client: Client) -> None:
    assert_problem(client.get("/v1/schedules", headers=bearer(SUBMIT)), 403)
    assert_problem(client.get("/v1/schedules"), 401)
