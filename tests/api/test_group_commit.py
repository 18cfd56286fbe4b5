"""Concurrent single enqueues share statements (api.batcher); every caller still gets the
answer its own request deserves, even when a neighbour in the same group is rejected."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg

from api.app import create_app
from api.config import ApiSettings, parse_tokens
from broker.config import Settings
from tests.api.conftest import SUBMIT, TOKENS, asgi_client, bearer


def test_bad_neighbours_do_not_fail_good_requests(
    db_url: str, conn: psycopg.Connection[Any]
) -> None:
    conn.execute(
        "SELECT broker.enqueue('charge', '{}'::jsonb, idempotency_key => %s)",
        (_scoped_key("taken"),),
    )
    app = create_app(
        Settings(database_url=db_url), api_settings=ApiSettings(tokens=parse_tokens(TOKENS))
    )
    bodies: list[tuple[dict[str, Any], dict[str, str], int]] = []
    for n in range(60):
        if n % 10 == 3:  # rejected by the database: run_at and delay together
            bodies.append(({"kind": "k", "run_at": "2030-01-01T00:00:00Z", "delay": 1}, {}, 422))
        elif n % 10 == 7:  # idempotency conflict with the job enqueued above
            bodies.append(({"kind": "refund"}, {"Idempotency-Key": "taken"}, 422))
        else:
            bodies.append(({"kind": "k", "args": {"n": n}}, {}, 201))

    async def run() -> list[Any]:
        async with asgi_client(app) as c:
            return await asyncio.gather(
                *(
                    c.post("/v1/jobs", json=body, headers={**bearer(SUBMIT), **extra})
                    for body, extra, _ in bodies
                )
            )

    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [status for _, _, status in bodies]
    created = [r.json() for r in responses if r.status_code == 201]
    assert sorted(j["args"]["n"] for j in created) == [n for n in range(60) if n % 10 not in (3, 7)]
    assert conn.execute("SELECT count(*) FROM broker.jobs").fetchone() == (len(created) + 1,)


def _scoped_key(key: str) -> str:
    import hashlib

    return hashlib.sha256(SUBMIT.encode()).hexdigest()[:16] + ":" + key


def test_concurrent_enqueues_share_transactions(db_url: str, conn: psycopg.Connection[Any]) -> None:
    app = create_app(
        Settings(database_url=db_url), api_settings=ApiSettings(tokens=parse_tokens(TOKENS))
    )

    async def run() -> list[Any]:
        async with asgi_client(app) as c:
            return await asyncio.gather(
                *(
                    c.post("/v1/jobs", json={"kind": "k", "args": {"n": n}}, headers=bearer(SUBMIT))
                    for n in range(40)
                )
            )

    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [201] * 40
    assert sorted(r.json()["args"]["n"] for r in responses) == list(range(40))
    # created_at is the transaction's start time: fewer distinct values than jobs means
    # requests were committed together.
    (transactions,) = conn.execute(
        "SELECT count(DISTINCT created_at) FROM broker.jobs"
    ).fetchone() or (0,)
    assert transactions < 40
