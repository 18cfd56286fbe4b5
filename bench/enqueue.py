"""Benchmark enqueue through the library: batch `enqueue_many` throughput and single `enqueue`.

Batch: TOTAL no-op jobs (default 100,000) enqueued in calls of BATCH specs (default 1,000
and 10,000), one connection, after TRUNCATE + VACUUM ANALYZE + CHECKPOINT, two ways:
`Broker.enqueue_many` as users call it (plain batches of 500 or more take the COPY
path) and the `broker.enqueue_many(jsonb)` SQL function itself, which every keyed
(idempotency/subject) batch, small batch, REST and SQL caller goes through. The JobSpec
objects are built before the clock starts (that is the caller's work); serialization,
the round trips and the database work (jobs rows, `enqueued` events, NOTIFY) are timed.
Single: Broker.enqueue in a loop for SECONDS, one connection, one transaction per call.

    python -m bench.enqueue                          # 100,000 jobs, batch 1,000 and 10,000
    python -m bench.enqueue --total 5000 --seconds 1 --reps 1   # quick smoke run

It creates a scratch database (default `broker_bench_enqueue`), migrates it with
broker.migrate.upgrade, and drops it at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from bench._scratch import reset, scratch_database, settle
from broker import Broker, JobSpec, lease
from broker.config import DEFAULT_SCHEMA

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
PATHS = {
    "library": "Broker.enqueue_many",
    "function": "SQL enqueue_many(jsonb)",
}


def batch_enqueue(broker: Broker, total: int, batch: int, path: str) -> float:
    """Enqueue `total` jobs in calls of `batch` through `path` ("library" or "function");
    returns jobs/s."""
    specs = [JobSpec("noop", {"i": i}) for i in range(total)]
    chunks = [specs[start : start + batch] for start in range(0, total, batch)]
    t0 = time.perf_counter()
    for chunk in chunks:
        if path == "library":
            broker.enqueue_many(chunk)
        else:
            broker.run(lease.enqueue_many(chunk))
    return total / (time.perf_counter() - t0)


def single_enqueue(broker: Broker, seconds: float) -> float:
    """Call Broker.enqueue one job at a time for `seconds`; returns calls/s."""
    calls = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while time.perf_counter() < deadline:
        broker.enqueue("noop", {"i": calls})
        calls += 1
    return calls / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dsn",
        default=os.environ.get("BROKER_BENCH_DSN", DEFAULT_DSN),
        help="server to create the scratch database on (env BROKER_BENCH_DSN)",
    )
    parser.add_argument("--db", default="broker_bench_enqueue", help="scratch database name")
    parser.add_argument("--schema", default=DEFAULT_SCHEMA)
    parser.add_argument("--total", type=int, default=100_000, help="jobs per batch run")
    parser.add_argument(
        "--batch",
        type=int,
        action="append",
        help="specs per call (repeatable; default 1000, 10000)",
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of the single run")
    parser.add_argument("--reps", type=int, default=3)
    opts = parser.parse_args()
    batches = opts.batch or [1_000, 10_000]

    rates: dict[str, list[float]] = {}
    with (
        scratch_database(opts.dsn, opts.db, opts.schema) as url,
        Broker.connect(url, schema=opts.schema, min_size=1, max_size=1) as broker,
    ):
        broker.db_clock()  # open the connection before any clock starts
        for rep in range(opts.reps):
            for path in ("library", "function"):
                for batch in batches:
                    reset(url, opts.schema)
                    settle(url, opts.schema)
                    rate = batch_enqueue(broker, opts.total, batch, path)
                    name = f"{PATHS[path]} batch {batch:,}"
                    rates.setdefault(name, []).append(rate)
                    print(
                        f"rep {rep} {name} ({opts.total:,} jobs): {rate:,.0f} jobs/s",
                        flush=True,
                    )
            reset(url, opts.schema)
            settle(url, opts.schema)
            rate = single_enqueue(broker, opts.seconds)
            rates.setdefault("enqueue (one job per call)", []).append(rate)
            print(f"rep {rep} enqueue one job per call: {rate:,.0f} calls/s", flush=True)

    print(f"\nsummary ({opts.reps} reps; median [min-max])")
    for name, values in rates.items():
        print(
            f"  {name}: {statistics.median(values):,.0f} "
            f"[{min(values):,.0f}-{max(values):,.0f}] per s"
        )


if __name__ == "__main__":
    main()
