"""What resolving dependents costs the finish statement of jobs that have none.

Three scratch databases on one server, the same workload in each: enqueue 100 jobs,
claim them (untimed), then time the one finish statement that completes all 100
(`lease.finish`, the worker's write). The databases differ only in the jobs trigger:

    before   migrated to 0007: _count_finished keeps job_counts only
    after    migrated to head: it also probes job_dependencies for every job that ended
    edges    head, with EDGES waiting jobs (of other queues) and their edges in the table,
             so the probes walk a populated index rather than an empty one

Rounds alternate the databases (rotating which goes first), so drift of the shared machine
hits all three alike; the figure is the median of the per-statement times, client-side
(round trip and commit included, synchronous_commit off), with the 10th and 90th
percentiles.

    python -m bench.finish_trigger                 # 200 rounds
    python -m bench.finish_trigger --rounds 30     # smoke run
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import ExitStack

import psycopg

from bench._scratch import scratch_database, settle
from broker import Broker, JobSpec, lease
from broker._queries import queries
from broker.config import DEFAULT_SCHEMA
from broker.migrate import downgrade

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
BATCH = 100
EDGES = 20_000
WORKER = "bench:1"


def _fill_edges(url: str) -> None:
    """EDGES waiting jobs in queue `blocked`, each waiting for one of EDGES / 2 parents in
    queue `parents` (never claimed here)."""
    with Broker.connect(url, max_size=1) as broker:
        parents = broker.enqueue_many([JobSpec("p", queue="parents") for _ in range(EDGES // 2)])
        for start in range(0, EDGES, 5000):
            broker.enqueue_many(
                [
                    JobSpec("c", queue="blocked", depends_on=[parents[i % len(parents)].id])
                    for i in range(start, start + 5000)
                ]
            )


def _round(broker: Broker) -> tuple[float, float, float]:
    """(seconds the finish statement took at the client, ms its trigger took at the server,
    ms the whole statement took at the server)."""
    broker.enqueue_many([JobSpec("noop", {"i": i}) for i in range(BATCH)])
    held = broker.claim(["default"], BATCH, WORKER)
    assert len(held) == BATCH
    statement = lease.finish([lease.completed(h) for h in held], "broker_jobs")
    with broker.pool.connection() as conn:
        t0 = time.perf_counter()
        broker.run(statement, conn)
        elapsed = time.perf_counter() - t0
    # The same statement on the next batch under EXPLAIN ANALYZE: the jobs trigger's own
    # time, as the server measures it (no client, network or commit in it).
    broker.enqueue_many([JobSpec("noop", {"i": i}) for i in range(BATCH)])
    held = broker.claim(["default"], BATCH, WORKER)
    statement = lease.finish([lease.completed(h) for h in held], "broker_jobs")
    query = queries(DEFAULT_SCHEMA)[statement.query]
    with broker.pool.connection() as conn:
        [[plan]] = conn.execute(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + query,  # type: ignore[operator]
            statement.params,
        ).fetchall()
    trigger = sum(t["Time"] for t in plan[0].get("Triggers", []))
    return elapsed, trigger, plan[0]["Execution Time"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=DEFAULT_DSN)
    parser.add_argument("--rounds", type=int, default=200)
    options = parser.parse_args()
    names = ("before", "after", "edges")
    with ExitStack() as stack:
        urls = {
            name: stack.enter_context(
                scratch_database(options.dsn, f"broker_bench_trigger_{name}", DEFAULT_SCHEMA)
            )
            for name in names
        }
        downgrade(urls["before"], DEFAULT_SCHEMA, "0007")
        _fill_edges(urls["edges"])
        for url in urls.values():
            settle(url, DEFAULT_SCHEMA)
        # The commit's WAL flush costs the same everywhere and is the noisiest part on a
        # shared disk: left out, so the figures are the statement's own work.
        quiet = "?options=-c%20synchronous_commit%3Doff"
        brokers = {
            name: stack.enter_context(Broker.connect(url + quiet, max_size=1))
            for name, url in urls.items()
        }
        for broker in brokers.values():  # warm up: plans cached, statements prepared
            for _ in range(10):
                _round(broker)
        times: dict[str, list[float]] = {name: [] for name in names}
        triggers: dict[str, list[float]] = {name: [] for name in names}
        server: dict[str, list[float]] = {name: [] for name in names}
        for n in range(options.rounds):
            order = names[n % 3 :] + names[: n % 3]
            for name in order:
                elapsed, trigger, total = _round(brokers[name])
                times[name].append(elapsed)
                triggers[name].append(trigger)
                server[name].append(total)
        with psycopg.connect(urls["edges"]) as conn:
            row = conn.execute("SELECT count(*) FROM broker.job_dependencies").fetchone()
        print(f"{options.rounds} rounds, finish of {BATCH} completions; edges db: {row} edges")
        base = statistics.median(times["before"])
        for name in names:
            ms = sorted(t * 1000 for t in times[name])
            p10, p90 = ms[len(ms) // 10], ms[len(ms) * 9 // 10]
            median = statistics.median(ms)
            print(
                f"  {name:7} median {median:6.3f} ms  p10 {p10:6.3f}  p90 {p90:6.3f}"
                f"  ({median / (base * 1000) - 1:+.1%} vs before);"
                f"  server: statement {statistics.median(server[name]):.3f} ms,"
                f" trigger {statistics.median(triggers[name]):.3f} ms"
            )


if __name__ == "__main__":
    main()
