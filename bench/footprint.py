"""Worker footprint: connections and memory per worker process, idle and while draining.

    python bench/footprint.py [--processes 4] [--concurrency 10] [--jobs 20000] [--idle 5]

Starts K worker processes (`python -m broker.worker --seq N`, one each) on a scratch
database, then samples pg_stat_activity (the broker's connections carry
`broker <role> <worker_id>` as application_name) and each process's RSS (/proc) in three
phases: idle after start, while draining N pre-queued no-op jobs, idle again after. Prints
connections per process (by role) and RSS per process for each phase, and how many
connections K workers hold in all: at max_connections=100, 100 / (connections per process)
workers fit on one server (less what the API, clients and superuser slots need).

Uses BROKER_DATABASE_URL's server (else an embedded one). Linux only (/proc). This file is
also the task module the workers import (`footprint_noop`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import psycopg

from broker import Broker, JobSpec, task

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _scratch import scratch_database
from worker_throughput import server_url, spawn_workers

QUEUE = "footprint"
SAMPLE_INTERVAL = 0.2


@task("footprint_noop", queue=QUEUE)
async def footprint_noop() -> None:
    """Does nothing: the footprint measured is the broker's."""


def rss_kib(pid: int) -> int | None:
    """Resident set size of process `pid` in KiB (None once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def connections(conn: psycopg.Connection[tuple[object, ...]]) -> dict[str, Counter[str]]:
    """Worker id -> connections per role, from the application names of this database.
    Names without a worker id (a listener's short-lived probe, or a connection a worker
    never renamed, such as the scheduler's before the connections were shared) are under
    "-"."""
    rows = conn.execute(
        "SELECT application_name FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name LIKE 'broker %%'"
        " AND pid <> pg_backend_pid()"
    ).fetchall()
    found: dict[str, Counter[str]] = defaultdict(Counter)
    for (name,) in rows:
        parts = str(name).split()
        worker = parts[2] if len(parts) >= 3 else "-"
        found[worker][parts[1] if len(parts) > 1 else "?"] += 1
    return found


class Phase:
    """Samples of one phase: connections per worker process and RSS per process."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.per_process: list[int] = []
        self.roles: Counter[str] = Counter()
        self.unattributed: Counter[str] = Counter()
        self.rss: dict[int, list[int]] = defaultdict(list)
        self.samples = 0

    def sample(self, conn: psycopg.Connection[tuple[object, ...]], workers: dict[str, int]) -> None:
        found = connections(conn)
        self.samples += 1
        for worker_id in workers:
            held = found.get(worker_id, Counter())
            self.per_process.append(sum(held.values()))
            self.roles.update(held)
        self.unattributed.update(found.get("-", Counter()))
        for pid in workers.values():
            kib = rss_kib(pid)
            if kib is not None:
                self.rss[pid].append(kib)

    def report(self, processes: int) -> str:
        if not self.samples:
            return f"{self.name}: no samples"
        per_role = ", ".join(
            f"{role} {n / (self.samples * processes):.2f}" for role, n in sorted(self.roles.items())
        )
        rss = [max(v) / 1024 for v in self.rss.values()]
        unnamed = ", ".join(
            f"{role} {n / (self.samples * processes):.2f}"
            for role, n in sorted(self.unattributed.items())
        )
        return (
            f"{self.name} ({self.samples} samples): connections per process"
            f" mean {statistics.mean(self.per_process):.2f}, max {max(self.per_process)}"
            f" ({per_role}); without a worker id, per process: {unnamed or 'none'};"
            f" RSS per process max {max(rss):.1f} MiB,"
            f" mean of maxima {statistics.mean(rss):.1f} MiB"
        )


def run_phase(
    phase: Phase,
    conn: psycopg.Connection[tuple[object, ...]],
    workers: dict[str, int],
    until: Callable[[], bool],
    procs: list[subprocess.Popen[bytes]],
) -> None:
    while True:
        phase.sample(conn, workers)
        if until():
            return
        for proc in procs:
            if proc.poll() is not None:
                raise SystemExit(f"a worker exited with {proc.returncode}")
        time.sleep(SAMPLE_INTERVAL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--idle", type=float, default=5.0, help="seconds sampled when idle")
    args = parser.parse_args()
    server = server_url()
    state = Path(tempfile.mkdtemp(prefix="broker-footprint-"))
    with scratch_database(server, f"broker_footprint_{os.getpid()}", "broker") as url:
        procs = [
            spawn_workers(url, "footprint", QUEUE, args.concurrency, None, state, options=seq)
            for seq in (["--seq", str(n)] for n in range(1, args.processes + 1))
        ]
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                deadline = time.monotonic() + 60
                while True:
                    rows = conn.execute(
                        "SELECT worker_id, pid FROM broker.workers WHERE stopped_at IS NULL"
                    ).fetchall()
                    if len(rows) == args.processes:
                        break
                    if time.monotonic() > deadline:
                        raise SystemExit(f"only {len(rows)} of {args.processes} workers started")
                    time.sleep(0.2)
                workers = {str(worker_id): int(pid) for worker_id, pid in rows}
                time.sleep(1.0)  # the listener's probe connection comes and goes
                phases = [Phase("idle"), Phase("draining"), Phase("idle after")]
                idle_until = time.monotonic() + args.idle
                run_phase(phases[0], conn, workers, lambda: time.monotonic() > idle_until, procs)
                with Broker.connect(url) as client:
                    for start in range(0, args.jobs, 5000):
                        count = min(5000, args.jobs - start)
                        client.enqueue_many(
                            [JobSpec("footprint_noop", queue=QUEUE) for _ in range(count)]
                        )

                def drained() -> bool:
                    row = conn.execute(
                        "SELECT count(*) FROM broker.jobs WHERE state = 'succeeded'"
                    ).fetchone()
                    return row is not None and int(str(row[0])) >= args.jobs

                run_phase(phases[1], conn, workers, drained, procs)
                after_until = time.monotonic() + args.idle
                run_phase(phases[2], conn, workers, lambda: time.monotonic() > after_until, procs)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(60)
    print(
        f"{args.processes} worker process(es) x concurrency {args.concurrency},"
        f" {args.jobs} no-op jobs"
    )
    for phase in phases:
        print("  " + phase.report(args.processes))


if __name__ == "__main__":
    main()
