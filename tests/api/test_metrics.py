"""GET /metrics: prometheus_client's exposition of an app's own registry, parsed back with
prometheus_client's parser, against known database contents."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from litestar.testing import TestClient
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from api.config import ApiSettings
from api.deps import Runtime
from api.metrics import DB_CACHE_SECONDS
from broker import _executor as executor
from broker.config import Settings
from broker.types import JOB_STATES
from tests.api.conftest import ADMIN, SUBMIT, asgi_client, bearer
from tests.dbtime import advance_db_time

Client = TestClient  # type: ignore[type-arg]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """Every sample of an exposition, keyed by (name, sorted labels)."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def value(found: Samples, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def scrape(client: Client) -> Samples:
    r = client.get("/metrics", headers=bearer(ADMIN))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == CONTENT_TYPE_LATEST
    return samples(r.text)


def runtime(client: Client) -> Runtime:
    found: Runtime = client.app.state.runtime
    return found


@pytest.fixture
def reads() -> Iterator[list[str]]:
    """Names of the metrics_snapshot statements run while the test runs."""
    seen: list[str] = []

    def observer(name: str, seconds: float, error: BaseException | None) -> None:
        if name == "metrics_snapshot":
            seen.append(name)

    remove = executor.observe(observer)
    yield seen
    remove()


def test_gauges_match_the_database(client: Client, conn: psycopg.Connection[Any]) -> None:
    # q1: 2 runnable, 1 scheduled, 1 running, 1 succeeded, 1 failed; q2: only a cancelled job;
    # q3: no jobs but paused (listed like GET /v1/queues lists it).
    enqueue = "SELECT broker.enqueue(%s, queue => %s, delay => %s::interval)"
    for queue, delay in [("q1", "0"), ("q1", "0"), ("q1", "1 hour")] + [("q1", "0")] * 3:
        conn.execute(enqueue, ("k", queue, delay))
    conn.execute(enqueue, ("k", "q2", "0"))
    running = conn.execute(
        "UPDATE broker.jobs SET state = 'running', attempts = 1, lease_epoch = 1, "
        "lease_expires_at = now() + interval '1 minute', worker_id = 'w:1' "
        "WHERE id IN (SELECT id FROM broker.jobs WHERE queue = 'q1' AND run_at <= now() "
        "ORDER BY id DESC LIMIT 3) RETURNING id"
    ).fetchall()
    ids = [r[0] for r in running]
    conn.execute(
        "UPDATE broker.jobs SET state = 'succeeded', lease_expires_at = NULL, "
        "finished_at = now() WHERE id = %s",
        (ids[0],),
    )
    conn.execute(
        "UPDATE broker.jobs SET state = 'failed', lease_expires_at = NULL, finished_at = now() "
        "WHERE id = %s",
        (ids[1],),
    )
    conn.execute(
        "UPDATE broker.jobs SET state = 'cancelled', finished_at = now() WHERE queue = 'q2'"
    )
    conn.execute("SELECT broker.pause_queue('q3')")
    # The runnable jobs became due 300 s ago by the database clock; the scheduled one is not due.
    advance_db_time(conn, 300)
    host = "6f1c9a44-0000-4000-8000-000000000001"
    conn.execute(
        """INSERT INTO broker.workers (worker_id, host_id, seq, hostname, pid, concurrency,
                                       last_seen, stopped_at)
           VALUES (%s, %s, 1, 'box', 10, 4, now(), NULL),
                  (%s, %s, 2, 'box', 11, 4, now(), NULL),
                  (%s, %s, 3, 'box', 12, 4, now() - interval '1 hour', NULL),
                  (%s, %s, 4, 'box', 13, 4, now(), now())""",
        (f"{host}:1", host, f"{host}:2", host, f"{host}:3", host, f"{host}:4", host),
    )

    found = scrape(client)
    expected = {
        "q1": {"queued": 3, "running": 1, "succeeded": 1, "failed": 1},
        "q2": {"cancelled": 1},
        "q3": {},
    }
    for queue, counts in expected.items():
        for state in JOB_STATES:
            # Every state of every queue is a series, zeros included.
            assert value(found, "broker_jobs", queue=queue, state=state) == counts.get(state, 0)
    assert {labels for name, labels in found if name == "broker_jobs"} == {
        (("queue", q), ("state", s)) for q in expected for s in JOB_STATES
    }
    assert 300 <= value(found, "broker_queue_oldest_age_seconds", queue="q1") < 400
    assert value(found, "broker_queue_oldest_age_seconds", queue="q2") == 0
    assert value(found, "broker_queue_oldest_age_seconds", queue="q3") == 0
    assert value(found, "broker_workers_alive") == 2
    assert value(found, "broker_database_up") == 1


def test_an_empty_database_reports_zeros(client: Client) -> None:
    found = scrape(client)
    assert value(found, "broker_workers_alive") == 0
    assert value(found, "broker_database_up") == 1
    assert not [name for name, _ in found if name == "broker_jobs"]
    # Counters exist at zero before anything happened.
    assert value(found, "broker_api_jobs_completed_total", state="succeeded") == 0
    assert value(found, "broker_api_lease_lost_total", write="heartbeat") == 0
    assert value(found, "broker_api_claim_duration_seconds_count") == 0


def test_counters_are_exact_past_a_million(client: Client) -> None:
    metrics = runtime(client).metrics
    metrics.enqueued.labels("big").inc(1_234_566)
    metrics.enqueued.labels("big").inc()
    metrics.completed.labels("succeeded").inc(10**15)
    r = client.get("/metrics", headers=bearer(ADMIN))
    # Six significant digits (the old hand-written `%g`) would read back as 1234570.
    assert "1.23457e+06" not in r.text
    found = samples(r.text)
    assert value(found, "broker_api_jobs_enqueued_total", queue="big") == 1_234_567
    assert value(found, "broker_api_jobs_completed_total", state="succeeded") == 10**15


def test_api_counters_and_request_metrics(client: Client) -> None:
    for _ in range(3):
        r = client.post("/v1/jobs", json={"kind": "k", "queue": "m"}, headers=bearer(SUBMIT))
        assert r.status_code == 201
    assert client.get("/v1/jobs/999999", headers=bearer(SUBMIT)).status_code == 404
    assert client.get("/v1/jobs/123456", headers=bearer(SUBMIT)).status_code == 404
    claimed = client.post(
        "/v1/leases", json={"worker_id": "w:1", "queues": ["m"], "limit": 1}, headers=bearer(ADMIN)
    )
    assert claimed.status_code == 200
    found = scrape(client)
    assert value(found, "broker_api_jobs_enqueued_total", queue="m") == 3
    assert value(found, "broker_api_claim_duration_seconds_count") == 1
    assert value(found, "broker_jobs", queue="m", state="running") == 1
    requests = "broker_api_http_requests_total"
    assert value(found, requests, method="POST", route="/v1/jobs", status="201") == 3
    # The route template, never the raw path: both ids count under one series.
    assert value(found, requests, method="GET", route="/v1/jobs/{job_id}", status="404") == 2
    assert not [labels for name, labels in found if name == requests and "999999" in str(labels)]
    duration = "broker_api_http_request_duration_seconds_count"
    assert value(found, duration, method="POST", route="/v1/jobs") == 3
    # The scrape that produced this exposition is counted once it has answered.
    again = scrape(client)
    assert value(again, requests, method="GET", route="/metrics", status="200") >= 1
    # Process metrics come from prometheus_client's own collectors.
    assert value(found, "process_cpu_seconds_total") >= 0


def test_database_reads_are_cached_and_shared(
    db_url: str, api_settings: ApiSettings, reads: list[str]
) -> None:
    app = create_app(Settings(database_url=db_url), api_settings=api_settings)
    gauges = app.state.runtime.metrics.database
    assert gauges.ttl == DB_CACHE_SECONDS

    async def scenario() -> None:
        async with asgi_client(app) as c:

            async def jobs_in_m() -> float:
                r = await c.get("/metrics", headers=bearer(ADMIN))
                assert r.status_code == 200
                found = samples(r.text)
                return found.get((("broker_jobs"), (("queue", "m"), ("state", "queued"))), 0)

            # A storm of concurrent scrapes costs one query.
            assert await asyncio.gather(*(jobs_in_m() for _ in range(20))) == [0] * 20
            assert len(reads) == 1
            r = await c.post("/v1/jobs", json={"kind": "k", "queue": "m"}, headers=bearer(SUBMIT))
            assert r.status_code == 201
            # Within the cache's lifetime the scrape shows the cached read.
            gauges.ttl = 3600
            assert await jobs_in_m() == 0 and len(reads) == 1
            # Once it is older than the cache's lifetime, the next scrape reads again.
            gauges.ttl = 0.05
            await asyncio.sleep(0.1)
            assert await jobs_in_m() == 1 and len(reads) == 2

    asyncio.run(scenario())


def test_two_apps_in_one_process_count_separately(db_url: str, api_settings: ApiSettings) -> None:
    first = create_app(Settings(database_url=db_url), api_settings=api_settings)
    second = create_app(Settings(database_url=db_url), api_settings=api_settings)
    with TestClient(first) as a, TestClient(second) as b:
        assert a.post("/v1/jobs", json={"kind": "k"}, headers=bearer(SUBMIT)).status_code == 201
        in_a, in_b = scrape(a), scrape(b)
    assert value(in_a, "broker_api_jobs_enqueued_total", queue="default") == 1
    assert ("broker_api_jobs_enqueued_total", (("queue", "default"),)) not in in_b
    posts = "broker_api_http_requests_total"
    assert value(in_a, posts, method="POST", route="/v1/jobs", status="201") == 1
    assert not [labels for name, labels in in_b if name == posts and ("method", "POST") in labels]
    # Both read the same database.
    assert value(in_b, "broker_jobs", queue="default", state="queued") == 1


def test_metrics_answer_while_the_database_is_down(api_settings: ApiSettings) -> None:
    app = create_app(
        Settings(database_url="postgresql://postgres@127.0.0.1:1/none"), api_settings=api_settings
    )
    with TestClient(app) as c:
        assert c.get("/metrics").status_code == 401
        for _ in range(2):  # the second one from the cached failed read
            found = scrape(c)
            assert value(found, "broker_database_up") == 0
            assert not [name for name, _ in found if name.startswith("broker_jobs")]
            assert "broker_workers_alive" not in {name for name, _ in found}
            assert value(found, "process_cpu_seconds_total") >= 0
            assert value(found, "broker_api_claim_duration_seconds_count") == 0


def test_an_unmigrated_database_reads_as_down(empty_db_url: str, api_settings: ApiSettings) -> None:
    app = create_app(Settings(database_url=empty_db_url), api_settings=api_settings)
    with TestClient(app) as c:
        assert value(scrape(c), "broker_database_up") == 0
