"""GET /v1/jobs/{id}?wait=SECONDS: answered when the job is terminal or the wait ends."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
from litestar.testing import TestClient

from broker import Broker
from tests.api.conftest import SUBMIT, bearer

Client = TestClient  # type: ignore[type-arg]
H = bearer(SUBMIT)


def test_wait_answers_when_the_job_ends(client: Client, db_url: str) -> None:
    created = client.post("/v1/jobs", json={"kind": "k"}, headers=H).json()
    with Broker.connect(db_url, min_size=1, max_size=1) as broker:

        def finish_soon() -> None:
            time.sleep(0.5)
            [held] = broker.claim(["default"], 1, "w:1")
            broker.complete_many([(held, {"n": 7})])

        finisher = threading.Thread(target=finish_soon)
        finisher.start()
        answer = client.get(f"/v1/jobs/{created['id']}?wait=30", headers=H)
        finisher.join(10)
    assert answer.status_code == 200
    assert (answer.json()["state"], answer.json()["result"]) == ("succeeded", {"n": 7})


def test_a_wait_that_ends_returns_the_job_as_it_is(client: Client) -> None:
    created = client.post("/v1/jobs", json={"kind": "k"}, headers=H).json()
    answer = client.get(f"/v1/jobs/{created['id']}?wait=0.2", headers=H)
    assert (answer.status_code, answer.json()["state"]) == (200, "queued")


def test_bad_waits_are_400_problems(client: Client, conn: psycopg.Connection[Any]) -> None:
    created = client.post("/v1/jobs", json={"kind": "k"}, headers=H).json()
    for bad in ("-1", "61", "abc", "nan", "inf", "1e400", ""):
        answer = client.get(f"/v1/jobs/{created['id']}?wait={bad}", headers=H)
        assert answer.status_code == 400, (bad, answer.text)
        assert answer.headers["content-type"].startswith("application/problem+json"), bad
    missing = client.get("/v1/jobs/999999999?wait=1", headers=H)
    assert missing.status_code == 404
