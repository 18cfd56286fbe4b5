"""Periodic jobs with real worker processes: every tick enqueued exactly once by three
workers (separate hosts, no leader), and only the latest missed ticks after downtime."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from pathlib import Path

import psycopg
from worker_harness import WorkerProcess, query, wait_for

from broker.schedules import tick_key
from tests.dbtime import advance_db_time

PERIODIC = ["--tasks", "periodic_tasks", "--queues", "default"]
TICKS = 12


def ticks(url: str, kind: str) -> list[str]:
    return [
        r[0]
        for r in query(
            url,
            "SELECT idempotency_key FROM broker.jobs WHERE kind = %s ORDER BY idempotency_key",
            (kind,),
        )
    ]


def test_three_workers_enqueue_each_tick_exactly_once(db_url: str, tmp_path: Path) -> None:
    workers = [WorkerProcess(db_url, tmp_path / f"host{n}", PERIODIC) for n in range(3)]
    try:
        wait_for(
            lambda: len(ticks(db_url, "every_second")) >= TICKS,
            60,
            f"{TICKS} ticks of every_second",
            interval=0.2,
            diagnose=lambda: "\n".join(w.output()[-3000:] for w in workers),
        )
        alive = query(db_url, "SELECT count(*) FROM broker.worker_status WHERE status = 'alive'")
        assert alive == [(3,)]
    finally:
        for w in workers:
            assert w.stop() == 0, w.output()
    keys = ticks(db_url, "every_second")
    assert len(keys) == len(set(keys)), "a tick was enqueued twice"
    instants = sorted(datetime.fromisoformat(k.split(":", 2)[2]) for k in keys)
    gaps = {b - a for a, b in itertools.pairwise(instants)}
    assert gaps == {timedelta(seconds=1)}, f"ticks missing or doubled: {instants}"
    assert keys == sorted(tick_key("every_second", t) for t in instants)


def next_runs(url: str) -> dict[str, datetime]:
    return dict(
        query(url, "SELECT name, next_run_at FROM broker.schedules WHERE name LIKE 'hourly%%'")
    )  # type: ignore[arg-type]


def test_after_downtime_only_the_latest_missed_ticks_are_enqueued(
    db_url: str, tmp_path: Path
) -> None:
    with WorkerProcess(db_url, tmp_path, PERIODIC) as first:
        wait_for(
            lambda: len(next_runs(db_url)) == 2, 30, "declared schedules", diagnose=first.output
        )
        assert first.stop() == 0
    assert ticks(db_url, "hourly") == [] and ticks(db_url, "hourly_backfill") == []
    # Ten hours of downtime, by the database clock.
    with psycopg.connect(db_url, autocommit=True) as conn:
        advance_db_time(conn, 10 * 3600)
    missed = next_runs(db_url)  # the first of the ten missed ticks, for each
    with WorkerProcess(db_url, tmp_path, PERIODIC) as second:
        wait_for(
            lambda: (
                len(ticks(db_url, "hourly")) >= 1 and len(ticks(db_url, "hourly_backfill")) >= 3
            ),
            30,
            "missed ticks",
            diagnose=second.output,
        )
        assert second.stop() == 0
        log = second.output()
    hour = timedelta(hours=1)
    assert ticks(db_url, "hourly") == [tick_key("hourly", missed["hourly"] + 9 * hour)]
    start = missed["hourly_backfill"]
    assert ticks(db_url, "hourly_backfill") == [
        tick_key("hourly_backfill", start + k * hour) for k in (7, 8, 9)
    ], log
    after = next_runs(db_url)
    assert after["hourly"] == missed["hourly"] + 10 * hour
