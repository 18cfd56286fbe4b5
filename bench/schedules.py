"""Benchmark one scheduler pass: the time to enqueue every due tick of N due schedules.

N schedules (`every=60`, distinct names, one kind a live worker row declares) are created
through the same upsert the API uses, then every one is made due for exactly one tick
(next_run_at set to the previous whole minute, last tick cleared) and the jobs table is
emptied. The clock runs around the scheduler's work only: `scheduler_pass` in
transactions of `--batch` schedules on one connection (broker.schedules.run_pass), until
a pass claims fewer than a full batch. The script checks that N jobs were enqueued, each
with its tick's idempotency key.

    python -m bench.schedules                                  # 1,000 schedules, 3 reps
    python -m bench.schedules --schedules 100 --reps 1         # smoke run

It creates a scratch database (default `broker_bench_schedules`), migrates it with
broker.migrate.upgrade, and drops it at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import psycopg
from psycopg import sql

from bench._scratch import reset, scratch_database, settle
from broker import Broker
from broker import schedules as sch
from broker._executor import drive
from broker.config import DEFAULT_SCHEMA
from broker.worker.scheduler import DEFAULT_BATCH

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
KIND = "bench_tick"


def create(url: str, schema: str, n: int) -> None:
    """N schedules and a live worker that declares their kind (so none is orphaned)."""
    specs = [sch.ScheduleSpec(f"bench-{i:06d}", KIND, every=60, args={"i": i}) for i in range(n)]
    with Broker.connect(url, schema=schema, min_size=1, max_size=1) as broker:
        drive(sch.put_plan(specs), broker.run)


def make_due(url: str, schema: str) -> None:
    """Every schedule due for one tick; the bench worker alive; no jobs."""
    reset(url, schema)
    s = sql.Identifier(schema)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "INSERT INTO {}.workers (worker_id, host_id, seq, hostname, pid, meta)"
                " VALUES ('bench:1', gen_random_uuid(), 1, 'bench', 1, %s::jsonb)"
                " ON CONFLICT (worker_id) DO UPDATE SET last_seen = now(), stopped_at = NULL"
            ).format(s),
            (json.dumps({"kinds": [KIND]}),),
        )
        conn.execute(
            sql.SQL(
                "UPDATE {}.schedules SET next_run_at = date_trunc('minute', now())"
                " - interval '1 minute', last_tick = NULL, last_run_at = NULL"
            ).format(s)
        )
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(schema, "schedules")))
    settle(url, schema)


def one_run(url: str, schema: str, n: int, batch: int) -> tuple[float, int]:
    """Seconds to enqueue all due ticks, and how many passes (transactions) it took."""
    make_due(url, schema)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT 1")  # connected before the clock starts
        t0 = time.perf_counter()
        passes = enqueued = 0
        while True:
            done = sch.run_pass(conn, batch, schema)
            passes += 1
            enqueued += done.enqueued
            if not done.full:
                break
        elapsed = time.perf_counter() - t0
        keys = conn.execute(
            sql.SQL("SELECT count(DISTINCT idempotency_key) FROM {}.jobs").format(
                sql.Identifier(schema)
            )
        ).fetchone()
    assert enqueued == n and keys == (n,), (enqueued, keys)
    return elapsed, passes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=os.environ.get("BROKER_BENCH_DSN", DEFAULT_DSN))
    parser.add_argument("--db", default="broker_bench_schedules")
    parser.add_argument("--schema", default=DEFAULT_SCHEMA)
    parser.add_argument("--schedules", type=int, default=1000)
    parser.add_argument("--batch", type=int, action="append", help=f"default {DEFAULT_BATCH}")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    batches = args.batch or [DEFAULT_BATCH]
    with scratch_database(args.dsn, args.db, args.schema) as url:
        create(url, args.schema, args.schedules)
        for batch in batches:
            times = []
            for _ in range(args.reps):
                elapsed, passes = one_run(url, args.schema, args.schedules, batch)
                times.append(elapsed)
            best, median = min(times), statistics.median(times)
            print(
                f"{args.schedules} due schedules, batch {batch} ({passes} transactions): "
                f"median {median * 1000:.1f} ms, best {best * 1000:.1f} ms, "
                f"{args.schedules / median:,.0f} ticks/s"
            )


if __name__ == "__main__":
    main()
