"""Interleaved micro-benchmark: the claim and finish statements of one git revision
against the working tree's, on one connection, alternating, median of many rounds.

    python bench/flow_micro.py [--base d0188d8] [--rounds 200] [--batch 100]

Each round claims `batch` jobs of an unlimited queue and completes them (the claim timed
alone, then the finish alone), once with the base revision's SQL and once with the
current SQL, in alternating order. The current claim runs with the worker's claim
connection settings (broker/worker/_conn.py SESSION_SETTINGS: generic plans), the base
claim and both finishes with --plan-mode. Both run on the current schema; the base claim reads
broker.queue_pauses, so an empty one is created for it. Prints medians in microseconds.
Uses BROKER_DATABASE_URL (default the local server) and a scratch database.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from broker import lease
from broker._queries import parse
from broker.worker._conn import SESSION_SETTINGS

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def base_queries(rev: str) -> dict[str, str]:
    text = subprocess.run(
        ["git", "show", f"{rev}:broker/sql/jobs.sql"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    ident = sql.Identifier("broker")
    return {
        k: sql.SQL(v).format(schema=ident).as_string()  # type: ignore[arg-type]
        for k, v in parse(text, "jobs.sql").items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="d0188d8")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--plan-mode", default="auto", help="plan_cache_mode for both")
    parser.add_argument(
        "--no-worker-sessions",
        dest="worker_sessions",
        action="store_false",
        help="run the current claim under --plan-mode too, not the worker connection's settings",
    )
    args = parser.parse_args()
    server = os.environ.get("BROKER_DATABASE_URL", DEFAULT_DSN)
    name = f"broker_micro_{os.getpid()}"
    with psycopg.connect(server, autocommit=True) as c:
        c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = urlunsplit(urlsplit(server)._replace(path="/" + name))
    try:
        from broker.migrate import upgrade

        upgrade(url)
        run(url, args)
    finally:
        with psycopg.connect(server, autocommit=True) as c:
            c.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def run(url: str, args: argparse.Namespace) -> None:
    from broker._queries import queries

    old, new = base_queries(args.base), queries("broker")
    n, batch = args.rounds, args.batch
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE broker.queue_pauses (queue text PRIMARY KEY)")
        conn.execute(sql.SQL("SET plan_cache_mode = {}").format(sql.Identifier(args.plan_mode)))
        conn.execute(
            "INSERT INTO broker.jobs (kind) SELECT 'noop' FROM generate_series(1, %s)",
            [(n + 10) * 2 * batch + batch],
        )
        conn.execute("VACUUM ANALYZE broker.jobs")
        times: dict[str, list[float]] = {
            "old claim": [],
            "new claim": [],
            "old finish": [],
            "new finish": [],
        }

        mode = sql.SQL("SET plan_cache_mode = {}").format(sql.Identifier(args.plan_mode))

        def one(label: str, qs: dict[str, str], prepare: bool) -> None:
            claim = lease.claim(["default"], batch, "micro:1", 30.0)
            # Each side's claim runs with its worker's claim-connection session: the base
            # had none; the current one is SESSION_SETTINGS["work"] (generic plans).
            # Statements are prepared per text, so switching the mode between the two
            # sides leaves each side's plan to its own mode.
            if label == "new" and args.worker_sessions:
                for setting in SESSION_SETTINGS.get("work", ()):
                    conn.execute(setting)
            else:
                conn.execute(mode)
            t0 = time.perf_counter()
            rows = conn.execute(qs["job_claim"], dict(claim.params), prepare=prepare).fetchall()
            t1 = time.perf_counter()
            if label == "old":  # the base claim returns no meta column
                rows = [(*r, {}) for r in rows]
            held = claim.decode(rows)
            fin = lease.finish([lease.completed(h) for h in held], "broker_jobs")
            params = dict(fin.params)
            if label == "old":
                params.pop("caps")
            conn.execute(mode)
            t2 = time.perf_counter()
            conn.execute(qs["job_finish_many"], params, prepare=prepare).fetchall()
            t3 = time.perf_counter()
            assert len(held) == batch
            times[f"{label} claim"].append(t1 - t0)
            times[f"{label} finish"].append(t3 - t2)

        for _ in range(10):  # warm up; both get prepared
            one("old", old, True)
            one("new", new, True)
        for k in times:
            times[k].clear()
        for i in range(n):
            order = [("old", old), ("new", new)] if i % 2 else [("new", new), ("old", old)]
            for label, qs in order:
                one(label, qs, True)
    for k, v in times.items():
        q = statistics.quantiles(v, n=4)
        print(
            f"{k:>10}: median {statistics.median(v) * 1e6:8.0f} us  p25 {q[0] * 1e6:8.0f}"
            f"  p75 {q[2] * 1e6:8.0f}  (n={len(v)}, batch {batch})"
        )
    # Paired within a round, so load that comes and goes affects both sides alike.
    for what in ("claim", "finish"):
        ratios = [b / a for a, b in zip(times[f"old {what}"], times[f"new {what}"], strict=True)]
        print(f"{what:>10}: new/old median of per-round ratios {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
