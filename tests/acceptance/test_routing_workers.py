"""Jobs are not stranded silently (issue 14, item 1): with no queue named, a kind goes to
the queue its live workers declare; a job that lands where no live worker serves it is
reported by every door. Real workers, the real `broker` command, the REST app."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from litestar.testing import TestClient
from worker_harness import ROOT, WorkerProcess, scalar, wait_for

from api.app import create_app
from api.config import ApiSettings, parse_tokens
from broker import Broker, Settings
from broker.task import get_task

TOKEN = "routing-admin-token"
H = {"Authorization": f"Bearer {TOKEN}"}
SERVED_ELSEWHERE = "no live worker serves queue 'default' (kind 'routing.ok' is served on 'nc')"


def broker_cli(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env["BROKER_DATABASE_URL"] = db_url
    return subprocess.run(
        [sys.executable, "-m", "broker.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def alive(db_url: str, n: int = 1) -> None:
    wait_for(
        lambda: (
            scalar(db_url, "SELECT count(*) FROM broker.worker_status WHERE status = 'alive'") >= n
        ),
        30,
        "the worker to register",
    )


@pytest.fixture
def nc_worker(db_url: str, tmp_path: Path) -> Iterator[WorkerProcess]:
    """A worker running `routing.ok` (declared on `nc`) and serving only `nc`."""
    with WorkerProcess(
        db_url, tmp_path, ["--tasks", "tasks_fixture,routing_tasks", "--queues", "nc"]
    ) as worker:
        alive(db_url)
        yield worker


def test_the_cli_routes_to_the_declared_queue_and_warns_where_nobody_serves(
    db_url: str, nc_worker: WorkerProcess, broker: Broker
) -> None:
    assert get_task("routing.ok") is None  # this process never imports the task code
    routed = broker_cli(db_url, "enqueue", "routing.ok")
    assert (routed.returncode, routed.stderr) == (0, "")
    job_id = int(routed.stdout)
    assert broker.get_job(job_id).queue == "nc"
    wait_for(lambda: broker.get_job(job_id).state == "succeeded", 30, "the routed job to run")

    stranded = broker_cli(db_url, "enqueue", "routing.ok", "--queue", "default")
    assert stranded.returncode == 0
    assert stranded.stderr == f"warning: {SERVED_ELSEWHERE}\n"
    assert broker.get_job(int(stranded.stdout)).queue == "default"

    stats = broker_cli(db_url, "stats")
    assert "queue 'default': 1 queued, and no live worker serves it" in stats.stdout
    assert "queue 'nc'" not in stats.stdout


def test_rest_routes_and_answers_with_warnings(
    db_url: str, nc_worker: WorkerProcess, broker: Broker
) -> None:
    app = create_app(
        Settings(database_url=db_url), api_settings=ApiSettings(tokens=parse_tokens(TOKEN))
    )
    with TestClient(app) as client:
        routed = client.post("/v1/jobs", json={"kind": "routing.ok"}, headers=H)
        assert routed.status_code == 201, routed.text
        assert (routed.json()["queue"], routed.json()["warnings"]) == ("nc", [])
        stranded = client.post(
            "/v1/jobs", json={"kind": "routing.ok", "queue": "default"}, headers=H
        )
        assert stranded.json()["warnings"] == [SERVED_ELSEWHERE]
        batch = client.post(
            "/v1/jobs/batch",
            json={"jobs": [{"kind": "routing.ok"}, {"kind": "routing.ok", "queue": "default"}]},
            headers=H,
        )
        first, second = batch.json()["jobs"]
        assert broker.get_job(first["id"]).queue == "nc" and first["warnings"] == []
        assert second["warnings"] == [SERVED_ELSEWHERE]
        queues = {q["queue"]: q for q in client.get("/v1/queues", headers=H).json()["queues"]}
        assert queues["default"]["served"] is False and queues["default"]["queued"] == 2
        assert queues["nc"]["served"] is True


def test_python_routes_an_unimported_kind_by_the_registry(
    db_url: str, nc_worker: WorkerProcess, broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    assert broker.get_job(broker.enqueue("routing.ok").id).queue == "nc"
    stranded = broker.enqueue("routing.ok", queue="default")
    # An explicit queue takes the plain statement: no registry read, no warning.
    assert stranded.warnings == ()
    unknown = broker.enqueue("routing.nobody")
    assert broker.get_job(unknown.id).queue == "default"
    assert unknown.warnings == ("no live worker serves queue 'default'",)
    assert "no live worker serves queue 'default'" in caplog.text


def test_workers_that_disagree_get_a_deterministic_queue_and_a_warning(
    db_url: str, broker: Broker, tmp_path: Path
) -> None:
    def worker(queue: str) -> WorkerProcess:
        args = ["--tasks", "tasks_fixture,routing_tasks", "--queues", queue]
        return WorkerProcess(db_url, tmp_path / queue, args, ROUTING_SPLIT_QUEUE=queue)

    with worker("right"), worker("left"):
        alive(db_url, 2)
        done = broker_cli(db_url, "enqueue", "routing.split")
        assert done.returncode == 0
        # One worker each: the tie goes to the first queue by name.
        assert broker.get_job(int(done.stdout)).queue == "left"
        assert done.stderr == (
            "warning: live workers declare kind 'routing.split' on different queues "
            "('left', 'right'); it went to 'left'\n"
        )
