"""The finish statement for a batch of completions, against the statement it replaced.

    python -m bench.finish_statement                 # 100,000 jobs, batches of 100
    python -m bench.finish_statement --jobs 20000    # quick

On one connection: claim `--batch` jobs, then finish them with one of the variants,
taking the variants in turn so the machine's drift hits them alike; each finish is timed
from building its parameters to fetching its rows. Prints the median per variant and its
ratio to `job_complete_many`, the completion-only statement of 44852eb (kept below as
the reference: it wrote the same `succeeded` rows and events, and had no NOTIFY).
Creates a scratch database (default `broker_bench_finish`) and drops it at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import msgspec
import psycopg

from bench._scratch import scratch_database
from broker import Broker, JobSpec, lease
from broker._executor import configure
from broker._queries import queries
from broker.config import DEFAULT_SCHEMA
from broker.types import Lease

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
CHANNEL = "broker_jobs"

OLD_COMPLETE_MANY = """
WITH applied AS (
    UPDATE {schema}.jobs j
    SET state = 'succeeded', result = nullif(d.result::jsonb, 'null'::jsonb),
        finished_at = now(), lease_expires_at = NULL
    FROM unnest(%(ids)s::bigint[], %(epochs)s::bigint[], %(results)s::text[])
         AS d(id, epoch, result)
    WHERE j.id = d.id AND j.lease_epoch = d.epoch AND j.state = 'running'
    RETURNING j.id, j.lease_epoch, j.state
), ev AS (
    INSERT INTO {schema}.job_events (job_id, event, epoch, worker_id)
    SELECT id, 'succeeded', lease_epoch, %(worker_id)s FROM applied
), rejected AS (
    INSERT INTO {schema}.job_events (job_id, event, epoch, worker_id, detail)
    SELECT d.id, 'stale_write_rejected', d.epoch, %(worker_id)s,
           jsonb_build_object('write', 'complete', 'state', j.state, 'lease_epoch', j.lease_epoch)
    FROM unnest(%(ids)s::bigint[], %(epochs)s::bigint[]) AS d(id, epoch)
    JOIN {schema}.jobs j ON j.id = d.id
    WHERE (SELECT count(*) FROM applied) < cardinality(%(ids)s::bigint[])
      AND NOT EXISTS (SELECT 1 FROM applied a WHERE a.id = d.id)
)
SELECT id, state FROM applied
"""

Conn = psycopg.Connection[Any]
Variant = Callable[[Conn, list[Lease]], None]


def variants(schema: str) -> dict[str, Variant]:
    old_sql = OLD_COMPLETE_MANY.format(schema=schema)
    finish_sql = queries(schema)["job_finish_many"]

    def old(conn: Conn, held: list[Lease]) -> None:
        if len({h.job_id for h in held}) != len(held):
            raise ValueError("one write per job per batch")
        params = {
            "ids": [h.job_id for h in held],
            "epochs": [h.epoch for h in held],
            "results": [msgspec.json.encode(None).decode() for _ in held],
            "worker_id": held[0].worker_id,
        }
        conn.execute(old_sql, params, prepare=True).fetchall()

    def finish(conn: Conn, held: list[Lease]) -> None:
        stmt = lease.finish([lease.completed(h) for h in held], CHANNEL)
        stmt.decode(conn.execute(finish_sql, stmt.params, prepare=True).fetchall())

    return {"job_complete_many (old)": old, "job_finish_many": finish}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=os.environ.get("BROKER_BENCH_DSN", DEFAULT_DSN))
    parser.add_argument("--db", default="broker_bench_finish")
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=100)
    opts = parser.parse_args()
    schema = DEFAULT_SCHEMA
    with scratch_database(opts.dsn, opts.db, schema) as url:
        with Broker.connect(url, min_size=1, max_size=1) as broker:
            for start in range(0, opts.jobs, 10_000):
                count = min(10_000, opts.jobs - start)
                broker.enqueue_many([JobSpec("noop", {"i": i}) for i in range(count)])
        with psycopg.connect(url, autocommit=True) as conn:
            configure(conn)
            conn.execute(f"VACUUM ANALYZE {schema}.jobs")
            runs = variants(schema)
            names = list(runs)
            times: dict[str, list[float]] = {name: [] for name in names}
            claim_sql = queries(schema)["job_claim"]
            turn = 0
            while True:
                stmt = lease.claim(["default"], opts.batch, "bench:1", 300)
                held = stmt.decode(conn.execute(claim_sql, stmt.params, prepare=True).fetchall())
                if not held:
                    break
                name = names[turn % len(names)]
                turn += 1
                t0 = time.perf_counter()
                runs[name](conn, held)
                times[name].append(time.perf_counter() - t0)
    base = statistics.median(times[names[0]][5:])
    print(f"finish {opts.batch} completions per statement; median over the run, ratio to old")
    for name in names:
        sample = times[name][5:]  # the first runs prepare the statement
        median = statistics.median(sample)
        print(f"  {name:26s} n={len(sample):4d}  {median * 1e3:6.3f} ms  {median / base:5.2f}")


if __name__ == "__main__":
    main()
