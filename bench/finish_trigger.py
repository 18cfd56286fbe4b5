"""What the jobs trigger costs the finish statement of jobs that have no dependents.

Scratch databases on one server, all migrated to head, the same workload in each: enqueue
100 jobs, claim them (untimed), then time the one finish statement that completes all 100
(`lease.finish`, the worker's write). The databases differ only in the jobs trigger
function (_count_finished), replaced in place:

    before     as it was before scheduling and flow control (git show d0188d8): job_counts
    head       as migrated: also the dependency probes, the done NOTIFY for waiters
               (migration 0011; since 0012 only for registered waiters) and the
               keyed-queue check (0012); nobody waits
    waiter     head while somebody waits for another job (one row in job_waiters)
    notify_all head notifying every ended job, as 0011 did
    no_notify  head without the done NOTIFY
    no_keyed   head without the keyed-queue check
    edges      head, with EDGES waiting jobs (of other queues) and their edges in the
               table, so the probes walk a populated index rather than an empty one

Rounds rotate the databases, so drift of the shared machine hits all alike; the figure is
the median of the per-statement times, client-side (round trip and commit included,
synchronous_commit off), with the 10th and 90th percentiles, and the server's own figures
for the statement and its trigger (EXPLAIN ANALYZE of the next batch).

    python -m bench.finish_trigger                 # 200 rounds
    python -m bench.finish_trigger --rounds 30     # smoke run
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path

import psycopg

from bench._scratch import scratch_database, settle
from broker import Broker, JobSpec, lease
from broker._queries import queries
from broker.config import DEFAULT_SCHEMA
from broker.migrate import schema_sql

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
BATCH = 100
EDGES = 20_000
WORKER = "bench:1"


BEFORE_REV = "d0188d8"
NOTIFY_BLOCK = re.compile(r"\n      IF waited THEN\n.*?\n      END IF;(?=\n)", re.S)
WAITER_CHECK = "IF waited THEN"
WAITER_JOIN = (
    f"\n                AND EXISTS (SELECT 1 FROM {DEFAULT_SCHEMA}.job_waiters w"
    " WHERE w.job_id = n.id)"
)
KEYED_BLOCK = re.compile(r"\n  IF keyed THEN\n.*?\n  END IF;(?=\n)", re.S)


def _trigger_function(text: str) -> str:
    """The CREATE FUNCTION statement of _count_finished in a schema.sql text."""
    start = text.index(f"CREATE FUNCTION {DEFAULT_SCHEMA}._count_finished()")
    end = text.index("$$;", text.index("$$", start) + 2) + 3
    return text[start:end].replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)


def _variants() -> dict[str, str | None]:
    """Database name -> the trigger function to install (None: as migrated)."""
    root = Path(__file__).resolve().parent.parent
    old = subprocess.run(
        ["git", "show", f"{BEFORE_REV}:broker/sql/schema.sql"],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    s = DEFAULT_SCHEMA
    before = _trigger_function(
        old.format(s=s, jobs_channel="x", cancel_channel="x", done_channel="x")
    )
    head = _trigger_function(schema_sql(DEFAULT_SCHEMA))
    no_notify, n = NOTIFY_BLOCK.subn("", head)
    notify_all = head.replace(WAITER_CHECK, "IF true THEN").replace(WAITER_JOIN, "")
    assert head.count(WAITER_CHECK) == 1 and head.count(WAITER_JOIN) == 1, "update the patterns"
    no_keyed, k = KEYED_BLOCK.subn("", head)
    assert n == 1 and k == 1, "the trigger function changed: update the patterns"
    return {
        "before": before,
        "head": None,
        "waiter": None,
        "notify_all": notify_all,
        "no_notify": no_notify,
        "no_keyed": no_keyed,
        "edges": None,
    }


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
    variants = _variants()
    names = tuple(variants)
    with ExitStack() as stack:
        urls = {
            name: stack.enter_context(
                scratch_database(options.dsn, f"broker_bench_trigger_{name}", DEFAULT_SCHEMA)
            )
            for name in names
        }
        for name, function in variants.items():
            if function is not None:
                with psycopg.connect(urls[name], autocommit=True) as conn:
                    conn.execute(function)  # type: ignore[arg-type]
        _fill_edges(urls["edges"])
        with psycopg.connect(urls["waiter"], autocommit=True) as conn:
            conn.execute(
                "INSERT INTO broker.job_waiters (job_id, expires_at)"
                " VALUES (0, now() + interval '1 day')"
            )
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
            order = names[n % len(names) :] + names[: n % len(names)]
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
                f"  {name:9} median {median:6.3f} ms  p10 {p10:6.3f}  p90 {p90:6.3f}"
                f"  ({median / (base * 1000) - 1:+.1%} vs before);"
                f"  server: statement {statistics.median(server[name]):.3f} ms,"
                f" trigger {statistics.median(triggers[name]):.3f} ms"
            )


if __name__ == "__main__":
    main()
