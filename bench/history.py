"""Drain rate against retained history: does a day of finished jobs slow the workers down?

    python -m bench.history                                  # 0, 1M, 5M retained; 3 reps
    python -m bench.history --retained 0,5000000 --reps 5
    python -m bench.history --retained 0,10000000            # outside CI: ~4 GB of disk
    python -m bench.history --queued 1000000                 # also: 1M queued behind the drain
    python -m bench.history --retained 0 --queued 1000,100000,1000000  # the backlog's curve
    python -m bench.history --pruner                         # also: the pruner deleting meanwhile
    python -m bench.history --churned                        # also: history with its dead rows

Each scenario gets its own scratch database, built once: `--retained` succeeded jobs (with
their enqueued/claimed/succeeded events, finished over the last day), VACUUM ANALYZE as
autovacuum would leave a day-old table. Then, rep by rep and scenario by scenario in turn
(so the machine's drift hits them alike), `--jobs` no-op jobs are queued and drained by
`--processes` worker processes; the rate is jobs / (last finished_at - first started_at),
database time. The ratio column is each rate over the fresh table's (0 retained) median.

Scenarios beyond plain retention: `--queued N[,N...]` adds, for each N, a database
holding N queued jobs of the same queue and priority behind the measured ones (the
drain measures the --jobs queued ahead of them); `--pruner` drains the largest history with
the workers' pruner on and a 12 h retention, so it deletes half the history meanwhile;
`--churned` builds the largest history through queued -> running -> succeeded updates
and skips the VACUUM, so the drain starts with all their dead row versions and index
entries (autovacuum may run meanwhile, as it would).
Uses --dsn (default BROKER_BENCH_DSN, else the local server); the user needs CREATEDB.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg

from bench._scratch import scratch_database
from bench.worker_throughput import poll_until, running, spawn_workers
from broker import Broker, inspection
from broker._queries import queries
from broker.lease import Statement
from broker.pruner import prune_batch

SCHEMA = "broker"
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass(frozen=True)
class Scenario:
    name: str
    retained: int
    queued: int = 0
    pruner: bool = False
    churned: bool = False


def build_history(url: str, scenario: Scenario) -> None:
    """Fill the scratch database server-side (generate_series): history, then a backlog."""
    with psycopg.connect(url, autocommit=True) as conn:
        if scenario.retained:
            conn.execute(
                "INSERT INTO broker.jobs (kind, args, queue, state, attempts, lease_epoch,"
                " worker_id, run_at, created_at, started_at, finished_at)"
                " SELECT 'bench_noop', jsonb_build_object('i', g), 'bench', 'succeeded', 1, 1,"
                " 'old:1', t, t, t, t"
                " FROM (SELECT g, now() - interval '1 day' + g * (interval '1 day' / %(n)s)"
                "       AS t FROM generate_series(1, %(n)s) g) s",
                {"n": scenario.retained},
            )
            conn.execute(
                "INSERT INTO broker.job_events (job_id, event, epoch, worker_id, at)"
                " SELECT j.id, e.event, e.epoch, e.worker, j.finished_at FROM broker.jobs j"
                " CROSS JOIN (VALUES ('enqueued', NULL, NULL), ('claimed', 1, 'old:1'),"
                "                    ('succeeded', 1, 'old:1')) e(event, epoch, worker)"
                " ORDER BY j.id"
            )
        if scenario.churned:
            # The history went through the queue as real jobs do: every row was queued,
            # then running, then succeeded, each a new row version and new index entries.
            # No VACUUM afterwards: the drain starts with every dead entry still there,
            # as when autovacuum has not caught up.
            conn.execute(
                "UPDATE broker.jobs SET state = 'queued', finished_at = NULL, started_at = NULL"
            )
            conn.execute(
                "UPDATE broker.jobs SET state = 'running', lease_expires_at = now(),"
                " started_at = created_at"
            )
            conn.execute(
                "UPDATE broker.jobs SET state = 'succeeded', lease_expires_at = NULL,"
                " finished_at = created_at"
            )
        top_up_backlog(conn, scenario)
        # The jobs trigger counted every inserted job in its own delta row of the
        # rollup; a day of running folds them every prune (a minute), so fold them here,
        # or the first prune's fold deletes millions (18 s at 10M, on the workers'
        # shared connection) and leaves a bloated job_counts behind.
        conn.execute("SELECT broker.fold_job_counts()")
        conn.execute("VACUUM ANALYZE broker.job_counts")
        conn.execute("ANALYZE broker.jobs" if scenario.churned else "VACUUM ANALYZE broker.jobs")
        conn.execute("VACUUM ANALYZE broker.job_events")
        conn.execute("CHECKPOINT")


def top_up_backlog(conn: psycopg.Connection[Any], scenario: Scenario) -> None:
    """Queue jobs behind the measured ones (same queue, priority 0 where they have 1,
    runnable now) until `scenario.queued` wait there. Each rep's workers take some of
    them between the last measured finish and their stop; topping up before every rep
    keeps the backlog its size (a backlog of 1,000 would be gone after the first)."""
    if scenario.queued:
        conn.execute(
            "INSERT INTO broker.jobs (kind, queue)"
            " SELECT 'bench_noop', 'bench' FROM generate_series(1, %s - ("
            "   SELECT count(*) FROM broker.jobs WHERE state = 'queued' AND priority = 0))",
            [scenario.queued],
        )


def drain(url: str, scenario: Scenario, jobs: int, processes: int, concurrency: int) -> float:
    """Queue `jobs` no-op jobs ahead of everything, drain them with real workers: jobs/s."""
    with psycopg.connect(url, autocommit=True) as conn:
        top_up_backlog(conn, scenario)
        row = conn.execute("SELECT coalesce(max(id), 0) FROM broker.jobs").fetchone()
        assert row is not None
        first = int(row[0]) + 1
        conn.execute(
            "SELECT broker.enqueue_many(jsonb_agg(jsonb_build_object("
            "'kind', 'bench_noop', 'queue', 'bench', 'priority', 1)))"
            " FROM generate_series(1, %s)",
            [jobs],
        )
    env = {
        "BROKER_PRUNE_INTERVAL": "1" if scenario.pruner else "0",
        "BROKER_RETENTION_SUCCEEDED": "12h",
    }
    spawned = spawn_workers(url, "worker_throughput", "bench", concurrency, processes, env=env)
    with running(spawned) as workers, psycopg.connect(url, autocommit=True) as conn:
        # The measured jobs are the priority-1 ones just queued (ids from `first`).
        row = poll_until(
            conn,
            workers,
            "SELECT count(*), extract(epoch FROM max(finished_at) - min(started_at))"
            " FROM broker.jobs WHERE id >= %s AND priority = 1 AND state = 'succeeded'",
            [first],
            done=lambda row: row[0] >= jobs,
        )
    return jobs / float(row[1])


@contextmanager
def databases(dsn: str, scenarios: list[Scenario]) -> Iterator[dict[str, str]]:
    with ExitStack() as stack:
        urls = {}
        for s in scenarios:
            started = time.monotonic()
            url = stack.enter_context(scratch_database(dsn, f"broker_hist_{s.name}", SCHEMA))
            build_history(url, s)
            print(f"# built {s.name} in {time.monotonic() - started:.0f} s", flush=True)
            urls[s.name] = url
        yield urls


def index_sizes(url: str) -> str:
    """The jobs table's rows and index sizes (the partial indexes should stay small)."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT indexrelname, pg_size_pretty(pg_relation_size(indexrelid))"
            " FROM pg_stat_user_indexes WHERE relname = 'jobs' ORDER BY 1"
        ).fetchall()
        count = conn.execute("SELECT count(*) FROM broker.jobs").fetchone()
    assert count is not None
    return f"{count[0]:,} rows; " + ", ".join(f"{n} {s}" for n, s in rows)


def read_statements() -> dict[str, Statement[Any]]:
    """The operator and API reads, by name: listing filters, stats, metrics, workers."""
    page = 50

    def listing(**filters: Any) -> Statement[Any]:
        return inspection.list_jobs(inspection.JobFilter(**filters), page)

    return {
        "jobs_list": listing(),
        "jobs_list state=queued": listing(state="queued"),
        "jobs_list state=running": listing(state="running"),
        "jobs_list state=failed": listing(state="failed"),
        "jobs_list queue=bench": listing(queue="bench"),
        "jobs_list tag=rare": listing(tag="rare"),
        "queues_list": inspection.queues(),
        "stats_overview": inspection.overview(),
        "metrics_snapshot": inspection.metrics_snapshot(),
        "workers_list": inspection.workers(),
        "prune_batch (nothing due)": prune_batch("succeeded", 30 * 86400, 1000),
    }


def time_reads(url: str, runs: int = 15) -> dict[str, tuple[float, bool]]:
    """Median milliseconds of each read (after warm-up runs, so psycopg prepares the ones it
    would), and whether its plan reads broker.jobs sequentially."""
    out: dict[str, tuple[float, bool]] = {}
    q = queries(SCHEMA)
    with Broker.connect(url, max_size=1) as client, psycopg.connect(url, autocommit=True) as c:
        c.cursor_factory = psycopg.ClientCursor
        for name, stmt in read_statements().items():
            times = []
            for i in range(runs + 6):
                started = time.perf_counter()
                client.run(stmt)
                if i >= 6:
                    times.append((time.perf_counter() - started) * 1000)
            plan = c.execute(f"EXPLAIN {q[stmt.query]}", dict(stmt.params)).fetchall()
            seq = any("Seq Scan on jobs" in r[0] for r in plan)
            out[name] = (statistics.median(times), seq)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=os.environ.get("BROKER_BENCH_DSN", DEFAULT_DSN))
    parser.add_argument("--retained", default="0,1000000,5000000")
    parser.add_argument(
        "--queued", default="", help="add a scenario with N queued (comma-separated Ns)"
    )
    parser.add_argument("--pruner", action="store_true", help="add a scenario with pruning")
    parser.add_argument(
        "--churned", action="store_true", help="add the largest history, churned and unvacuumed"
    )
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--reads", action="store_true", help="also time the API's reads")
    args = parser.parse_args()

    retained = [int(n) for n in args.retained.split(",")]
    scenarios = [Scenario(f"r{n}", n) for n in retained]
    for n in (int(n) for n in args.queued.split(",") if n):
        scenarios.append(Scenario(f"q{n}", 0, queued=n))
    if args.pruner:
        scenarios.append(Scenario(f"p{max(retained)}", max(retained), pruner=True))
    if args.churned:
        scenarios.append(Scenario(f"c{max(retained)}", max(retained), churned=True))
    rates: dict[str, list[float]] = {s.name: [] for s in scenarios}
    with databases(args.dsn, scenarios) as urls:
        before = {s.name: index_sizes(urls[s.name]) for s in scenarios}
        for rep in range(1, args.reps + 1):
            for s in scenarios:
                rate = drain(urls[s.name], s, args.jobs, args.processes, args.concurrency)
                rates[s.name].append(rate)
                print(f"rep {rep} {s.name:>10}: {rate:>9,.0f} jobs/s", flush=True)
        sizes = {s.name: index_sizes(urls[s.name]) for s in scenarios}
        reads = {s.name: time_reads(urls[s.name]) for s in scenarios} if args.reads else {}
    base = statistics.median(rates[scenarios[0].name])
    print(
        f"\n{args.jobs} jobs, {args.processes} processes x {args.concurrency}; "
        f"ratio = median / median of {scenarios[0].name}"
    )
    print(f"{'scenario':>10} {'median':>9} {'runs':>30} {'ratio':>6}")
    for s in scenarios:
        runs = ", ".join(f"{r:,.0f}" for r in rates[s.name])
        median = statistics.median(rates[s.name])
        print(f"{s.name:>10} {median:>9,.0f} {runs:>30} {median / base:>6.2f}")
    if reads:
        names = [s.name for s in scenarios]
        print(f"\nreads, median ms (* = sequential scan of jobs); ratio = last / {names[0]}")
        print(f"{'statement':>28} " + " ".join(f"{n:>10}" for n in names) + f" {'ratio':>6}")
        for stmt_name in read_statements():
            cells = [reads[n][stmt_name] for n in names]
            text = " ".join(f"{ms:>9.2f}{'*' if seq else ' '}" for ms, seq in cells)
            print(f"{stmt_name:>28} {text} {cells[-1][0] / cells[0][0]:>6.2f}")
    for name, text in sizes.items():
        print(f"# {name} before the runs: {before[name]}")
        print(f"# {name} after the runs:  {text}")


if __name__ == "__main__":
    main()
