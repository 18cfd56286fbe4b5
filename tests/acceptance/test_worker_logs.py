"""A real worker's own log: one line per job outcome on stderr, as text or as JSON lines."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from worker_harness import WorkerProcess, create_runs_table, scalar, wait_for

from broker import Broker, JobSpec


@pytest.fixture
def runs(db_url: str) -> str:
    create_runs_table(db_url)
    return db_url


def outcome_lines(output: str, job_id: int) -> list[str]:
    return [line for line in output.splitlines() if f"broker.worker.jobs: job {job_id} " in line]


def test_every_failed_attempt_logs_one_info_line(runs: str, broker: Broker, tmp_path: Path) -> None:
    [job] = broker.enqueue_many([JobSpec("value_error", max_attempts=4)])
    with WorkerProcess(runs, tmp_path) as worker:
        wait_for(
            lambda: broker.get_job(job.id).state == "failed",
            60,
            "four failed attempts",
            diagnose=worker.output,
        )
        wait_for(lambda: len(outcome_lines(worker.output(), job.id)) >= 4, 30, "the lines")
        assert worker.stop() == 0
        lines = outcome_lines(worker.output(), job.id)
    assert len(lines) == 4, lines
    pattern = re.compile(
        rf" INFO \d+ broker\.worker\.jobs: job {job.id} value_error attempt (\d): "
        r"failed -> (queued|failed) after \d+\.\d{3}s: ValueError: boom$"
    )
    matches = [pattern.search(line) for line in lines]
    assert all(matches), lines
    assert [(m.group(1), m.group(2)) for m in matches if m] == [
        ("1", "queued"),
        ("2", "queued"),
        ("3", "queued"),
        ("4", "failed"),
    ]
    assert "Traceback" not in "\n".join(lines)


def test_json_log_format_is_one_object_per_line(runs: str, broker: Broker, tmp_path: Path) -> None:
    ok, failing = broker.enqueue_many([JobSpec("noop"), JobSpec("value_error", max_attempts=2)])
    with WorkerProcess(runs, tmp_path, BROKER_LOG_FORMAT="json") as worker:
        wait_for(
            lambda: (
                broker.get_job(failing.id).state == "failed"
                and broker.get_job(ok.id).state == "succeeded"
            ),
            60,
            "both jobs to end",
            diagnose=worker.output,
        )
        assert worker.stop() == 0
        output = worker.output()
    records: list[dict[str, Any]] = [json.loads(line) for line in output.splitlines() if line]
    assert records, output
    for record in records:
        assert {"timestamp", "level", "logger", "message"} <= record.keys(), record
    jobs = [r for r in records if r["logger"] == "broker.worker.jobs"]
    by_job = {(r["job_id"], r["attempt"]): r for r in jobs}
    assert len(jobs) == len(by_job) == 3, jobs
    done = by_job[(ok.id, 1)]
    assert (done["level"], done["kind"], done["queue"]) == ("INFO", "noop", "default")
    assert (done["outcome"], done["state"]) == ("completed", "succeeded")
    assert isinstance(done["duration"], float) and done["duration"] >= 0
    assert "error" not in done
    retried, final = by_job[(failing.id, 1)], by_job[(failing.id, 2)]
    assert (retried["outcome"], retried["state"]) == ("failed", "queued")
    assert (final["outcome"], final["state"]) == ("failed", "failed")
    assert retried["error"] == final["error"] == "ValueError: boom"
    assert final["message"].endswith(": ValueError: boom")
    # The timestamp is ISO 8601 with a zone.
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", done["timestamp"])


def test_clock_skew_is_warned_about_once(runs: str, tmp_path: Path) -> None:
    # A tolerance no real clock pair meets: every heartbeat measures a skew beyond it.
    seen: set[object] = set()

    def heartbeats() -> bool:
        seen.add(scalar(runs, "SELECT max(last_seen) FROM broker.workers"))
        return len(seen - {None}) >= 5

    with WorkerProcess(
        runs, tmp_path, BROKER_CLOCK_SKEW_TOLERANCE="0.000000001", BROKER_LEASE_TTL="1.5"
    ) as worker:
        # Heartbeats every 0.5s, each measuring the skew again and refreshing last_seen.
        wait_for(heartbeats, 30, "five heartbeats", interval=0.2, diagnose=worker.output)
        assert worker.stop() == 0
        output = worker.output()
    assert output.count("clock differs") == 1, output
