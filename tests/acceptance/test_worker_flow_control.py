"""Flow control with real worker processes: a queue's concurrency limit across processes,
and Snooze raised by handlers."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from worker_harness import WorkerProcess, create_runs_table, query, states, wait_for

from broker import Broker, JobSpec
from broker import queues as queue_settings


@pytest.fixture
def runs(db_url: str) -> str:
    create_runs_table(db_url)
    return db_url


def max_overlap(url: str) -> int:
    """The most handler runs that were in progress at one instant (database time)."""
    rows = query(
        url,
        "SELECT max(n) FROM (SELECT sum(d) OVER (ORDER BY t, d) AS n FROM ("
        " SELECT started AS t, 1 AS d FROM public.test_runs"
        " UNION ALL SELECT finished, -1 FROM public.test_runs) e) x",
    )
    return int(rows[0][0] or 0)


def test_concurrency_limit_holds_across_worker_processes(
    runs: str, broker: Broker, tmp_path: Path
) -> None:
    broker.run(queue_settings.configure("limited", concurrency_limit=2))
    broker.enqueue_many(
        [JobSpec("db_timed", {"seconds": 0.15}, queue="limited") for _ in range(24)]
    )
    args = ["--queues", "limited", "--concurrency", "10"]
    workers = [
        WorkerProcess(runs, tmp_path / f"w{i}", args, BROKER_POLL_INTERVAL="0.2") for i in range(3)
    ]
    try:
        wait_for(
            lambda: states(runs).get("succeeded") == 24,
            90,
            "24 jobs to succeed",
            diagnose=lambda: "\n".join(w.output()[-3000:] for w in workers),
        )
        for w in workers:
            assert w.stop() == 0
    finally:
        for w in workers:
            w.__exit__(None, None, None)
    assert query(runs, "SELECT count(*), count(finished) FROM public.test_runs") == [(24, 24)]
    # Never more than two at once, and the limit was used (not one at a time).
    assert max_overlap(runs) == 2
    pids = query(runs, "SELECT count(DISTINCT pid) FROM public.test_runs")[0][0]
    assert pids >= 2, "one process ran everything: the limit was not tested across processes"


def test_handlers_snooze(runs: str, broker: Broker, tmp_path: Path) -> None:
    twice = broker.enqueue("snooze_twice").id
    forever = broker.enqueue("snooze_forever").id
    with WorkerProcess(runs, tmp_path, ["--queues", "default"]) as worker:
        wait_for(
            lambda: not {"queued", "running"} & set(states(runs)),
            30,
            "both jobs to end",
            diagnose=worker.output,
        )
        assert worker.stop() == 0
    done = broker.get_job(twice)
    assert (done.state, done.result, done.attempts) == ("succeeded", 3, 1)
    starts = [
        r[0]
        for r in query(
            runs, "SELECT started FROM public.test_runs WHERE job_id = %s ORDER BY id", (twice,)
        )
    ]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(starts)]
    assert len(gaps) == 2 and all(g >= 0.3 for g in gaps), gaps
    gave_up = broker.get_job(forever)
    assert gave_up.state == "failed"
    assert gave_up.last_error == "snoozed 2 times (max_snoozes); not snoozed again"
    events = [
        r[0]
        for r in query(
            runs, "SELECT event FROM broker.job_events WHERE job_id = %s ORDER BY id", (forever,)
        )
    ]
    assert events.count("snoozed") == 2 and events[-1] == "failed"
