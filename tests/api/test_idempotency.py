"""Idempotency keys over HTTP: replays, conflicts, per-token scope, and concurrent races."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from litestar.testing import TestClient

from api.app import create_app
from api.config import ApiSettings, parse_tokens
from broker.config import Settings
from tests.api.conftest import ADMIN, SUBMIT, TOKENS, asgi_client, bearer

Client = TestClient  # type: ignore[type-arg]


def test_replay_returns_the_original_job(client: Client) -> None:
    body = {"kind": "charge", "args": {"cents": 100}}
    headers = {**bearer(SUBMIT), "Idempotency-Key": "order-1"}
    first = client.post("/v1/jobs", json=body, headers=headers)
    again = client.post("/v1/jobs", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert first.json()["idempotency_key"] == "order-1"

    # The body field works the same and matches the header's key.
    in_body = client.post(
        "/v1/jobs", json={**body, "idempotency_key": "order-1"}, headers=bearer(SUBMIT)
    )
    assert in_body.status_code == 201 and in_body.json()["id"] == first.json()["id"]
    assert in_body.headers["idempotent-replayed"] == "true"


def test_same_key_different_request_is_422(client: Client) -> None:
    headers = {**bearer(SUBMIT), "Idempotency-Key": "order-2"}
    assert client.post("/v1/jobs", json={"kind": "charge"}, headers=headers).status_code == 201
    r = client.post("/v1/jobs", json={"kind": "charge", "priority": 1}, headers=headers)
    assert r.status_code == 422
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "order-2" in r.json()["detail"]
    assert r.json()["type"].endswith("idempotency-conflict")

    both = client.post(
        "/v1/jobs",
        json={"kind": "charge", "idempotency_key": "other"},
        headers={**bearer(SUBMIT), "Idempotency-Key": "order-2"},
    )
    assert both.status_code == 422 and "differ" in both.json()["detail"]


def test_keys_are_scoped_per_token(client: Client, conn: psycopg.Connection[Any]) -> None:
    body = {"kind": "charge"}
    mine = client.post(
        "/v1/jobs", json=body, headers={**bearer(SUBMIT), "Idempotency-Key": "shared"}
    )
    theirs = client.post(
        "/v1/jobs", json=body, headers={**bearer(ADMIN), "Idempotency-Key": "shared"}
    )
    assert mine.status_code == theirs.status_code == 201
    assert mine.json()["id"] != theirs.json()["id"]
    assert "idempotent-replayed" not in theirs.headers
    # A different body under the other token is no conflict either: separate key spaces.
    other = client.post(
        "/v1/jobs",
        json={"kind": "refund"},
        headers={**bearer(ADMIN), "Idempotency-Key": "shared2"},
    )
    assert other.status_code == 201
    stored = [r[0] for r in conn.execute("SELECT idempotency_key FROM broker.jobs ORDER BY id")]
    assert len(set(stored)) == 3 and all(
        k.endswith(":shared") or k.endswith(":shared2") for k in stored
    )


def test_batch_keys_replay_per_job(client: Client) -> None:
    jobs = [{"kind": "k", "idempotency_key": f"b{n}"} for n in range(5)]
    first = client.post("/v1/jobs/batch", json={"jobs": jobs}, headers=bearer(SUBMIT)).json()
    again = client.post(
        "/v1/jobs/batch", json={"jobs": [*jobs, {"kind": "k"}]}, headers=bearer(SUBMIT)
    ).json()
    assert [j["id"] for j in again["jobs"][:5]] == [j["id"] for j in first["jobs"]]
    assert [j["created"] for j in again["jobs"]] == [False] * 5 + [True]


def test_concurrent_posts_create_one_job_per_key(
    db_url: str, conn: psycopg.Connection[Any]
) -> None:
    settings = ApiSettings(tokens=parse_tokens(TOKENS), pool_size=10)
    app = create_app(Settings(database_url=db_url), api_settings=settings)

    async def run() -> list[Any]:
        async with asgi_client(app) as c:

            async def post(n: int) -> Any:
                key = f"key-{n % 20}"
                return await c.post(
                    "/v1/jobs",
                    json={"kind": "charge", "args": {"key": key}},
                    headers={**bearer(SUBMIT), "Idempotency-Key": key},
                )

            return await asyncio.gather(*(post(n) for n in range(200)))

    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [201] * 200
    created = [r for r in responses if "idempotent-replayed" not in r.headers]
    assert len(created) == 20
    by_key: dict[str, set[int]] = {}
    for r in responses:
        by_key.setdefault(r.json()["idempotency_key"], set()).add(r.json()["id"])
    assert len(by_key) == 20 and all(len(ids) == 1 for ids in by_key.values())
    first_by_id = {r.json()["id"]: r.json() for r in created}
    for r in responses:
        assert r.json() == first_by_id[r.json()["id"]]
    assert conn.execute("SELECT count(*) FROM broker.jobs").fetchone() == (20,)
