"""PATCH /v1/queues/{name}, POST /v1/queues/{name}/pause and /resume: limits and pauses
over HTTP, bad input as problem+json 4xx."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from litestar.testing import TestClient

from tests.api.conftest import ADMIN, SUBMIT, bearer

Client = TestClient  # type: ignore[type-arg]
H = bearer(ADMIN)


def problem(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = r.json()
    assert body["status"] == status
    return body


def test_patch_sets_and_keeps_limits(client: Client, conn: psycopg.Connection[Any]) -> None:
    r = client.patch("/v1/queues/mail", json={"concurrency_limit": 3}, headers=H)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "queue": "mail",
        "concurrency_limit": 3,
        "rate_limit": None,
        "rate_period_seconds": None,
        "paused": False,
    }
    r = client.patch(
        "/v1/queues/mail", json={"rate_limit": 10, "rate_period_seconds": 60}, headers=H
    )
    assert r.json()["concurrency_limit"] == 3 and r.json()["rate_limit"] == 10
    r = client.patch("/v1/queues/mail", json={"concurrency_limit": None}, headers=H)
    assert r.json()["concurrency_limit"] is None and r.json()["rate_period_seconds"] == 60.0
    listed = {q["queue"]: q for q in client.get("/v1/queues", headers=H).json()["queues"]}
    assert listed["mail"]["rate_limit"] == 10 and listed["mail"]["paused"] is False
    row = conn.execute("SELECT rate_period FROM broker.queues WHERE name = 'mail'").fetchone()
    assert row is not None and row[0].total_seconds() == 60


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        ({"concurrency_limit": 0}, 422, "concurrency_limit must be between 1"),
        ({"concurrency_limit": -5}, 422, "concurrency_limit must be between 1"),
        ({"concurrency_limit": 2**40}, 422, "concurrency_limit must be between 1"),
        ({"rate_limit": 5}, 422, "rate_limit needs a rate_period"),
        ({"rate_limit": 5, "rate_period_seconds": 0}, 422, "rate_period must be positive"),
        ({"rate_limit": 5, "rate_period_seconds": -1}, 422, "rate_period must be positive"),
        ({"rate_limit": 5, "rate_period_seconds": 1e300}, 422, "rate_period must be positive"),
        ({"concurrency_limit": "3"}, 400, None),
        ({"concurrency_limit": 1.5}, 400, None),
        ({"limit": 3}, 400, None),
    ],
)
def test_bad_limits_are_4xx_problems(
    client: Client, body: dict[str, Any], status: int, detail: str | None
) -> None:
    got = problem(client.patch("/v1/queues/mail", json=body, headers=H), status)
    if detail:
        assert detail in got["detail"]
        assert got["type"].endswith("/invalid-queue-settings")


def test_bad_queue_name_is_422(client: Client) -> None:
    problem(client.patch("/v1/queues/bad%20name", json={"concurrency_limit": 1}, headers=H), 422)
    problem(client.post("/v1/queues/" + "q" * 129 + "/pause", headers=H), 422)


def test_pause_and_resume(client: Client, conn: psycopg.Connection[Any]) -> None:
    r = client.post("/v1/queues/mail/pause", json={"reason": "provider down"}, headers=H)
    assert r.status_code == 200 and r.json() == {"queue": "mail", "paused": True, "changed": True}
    assert client.post("/v1/queues/mail/pause", headers=H).json()["changed"] is False
    row = conn.execute("SELECT paused FROM broker.queues WHERE name = 'mail'").fetchone()
    assert row == (True,)
    listed = {q["queue"]: q for q in client.get("/v1/queues", headers=H).json()["queues"]}
    assert listed["mail"]["paused"] is True
    r = client.post("/v1/queues/mail/resume", headers=H)
    assert r.json() == {"queue": "mail", "paused": False, "changed": True}
    assert client.post("/v1/queues/mail/resume", headers=H).json()["changed"] is False


def test_queue_settings_need_the_admin_scope(client: Client) -> None:
    problem(client.patch("/v1/queues/mail", json={}, headers=bearer(SUBMIT)), 403)
    problem(client.post("/v1/queues/mail/pause", headers=bearer(SUBMIT)), 403)
    problem(client.patch("/v1/queues/mail", json={}), 401)
