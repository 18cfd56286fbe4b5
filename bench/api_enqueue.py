"""Benchmark enqueue over HTTP: single POST /v1/jobs req/s (1 and 50 clients) and batch jobs/s.

Starts `broker api` (uvicorn, no access log) the way the README does, on a scratch
database, unless --url points at a running server. On a 2-core machine the load
generator shares the CPU with the server and PostgreSQL, so the figures are a floor.

    python -m bench.api_enqueue                      # 5 s per single-enqueue run, 50 batches
    python -m bench.api_enqueue --seconds 1 --batches 3   # quick smoke run
    python -m bench.api_enqueue --url http://127.0.0.1:8000 --token secret

Single enqueues are driven by wrk (Debian package `wrk`) when it is installed, else by
httpx; batches always by httpx (their cost is on the server).

Figures (2026-11-23, this 2-core machine, PostgreSQL 15 with fsync on, other test runs
sharing the CPU, so +-20% between runs; one server process):

    single POST /v1/jobs, 1 client      230-510 req/s  (one commit per request)
    single POST /v1/jobs, 50 clients    1,950-2,750 req/s  (group commit, api/batcher.py;
                                        ~240 req/s before it: notifying commits serialize)
    batch of 1,000, 1 client            17,000-35,000 jobs/s
    batch of 1,000, 4 clients           36,000-43,000 jobs/s

Server choice, same database, wrk, one process each, measured back to back:
uvicorn 2,418-2,753 vs granian 2.8.7 2,774-2,828 req/s on POST /v1/jobs with 50 clients,
427-510 vs 391-446 with one; GET /healthz 6,800 vs 16,000 req/s. Enqueue is bound by the
database, so `broker api` stays on uvicorn (already a dependency, no Rust wheel). Run one
uvicorn process per container/port: with --workers 2 every request here took ~45 ms at
low concurrency (even /healthz), which granian's workers did not show.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
from psycopg import sql

from broker.migrate import upgrade

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
TOKEN = "bench-token"


@contextmanager
def scratch_database(dsn: str, name: str) -> Iterator[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = urlunsplit(urlsplit(dsn)._replace(path="/" + name))
    upgrade(url)
    try:
        yield url
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@contextmanager
def api_server(db_url: str, workers: int) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "BROKER_DATABASE_URL": db_url, "BROKER_API_TOKENS": TOKEN}
    cmd = [sys.executable, "-m", "broker.cli", "api", "--port", str(port)]
    cmd += ["--workers", str(workers), "--no-access-log", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("broker api did not start")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def single(base: str, token: str, clients: int, seconds: float) -> tuple[int, float]:
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    done = 0
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits) as http:
        # Warm up connections and the server's pool before the clock starts.
        await asyncio.gather(
            *(http.post("/v1/jobs", json={"kind": "warmup"}) for _ in range(clients))
        )
        stop = time.perf_counter() + seconds

        async def client() -> None:
            nonlocal done
            while time.perf_counter() < stop:
                r = await http.post("/v1/jobs", json={"kind": "noop", "args": {"n": done}})
                if r.status_code != 201:
                    raise SystemExit(f"unexpected {r.status_code}: {r.text}")
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return done, elapsed


async def batches(base: str, token: str, count: int, size: int, clients: int) -> tuple[int, float]:
    headers = {"Authorization": f"Bearer {token}"}
    body = {"jobs": [{"kind": "noop", "args": {"n": n}} for n in range(size)]}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as http:
        await http.post("/v1/jobs/batch", json=body)  # warm-up
        queue = list(range(count))

        async def client() -> None:
            while queue:
                queue.pop()
                r = await http.post("/v1/jobs/batch", json=body)
                if r.status_code != 201:
                    raise SystemExit(f"unexpected {r.status_code}: {r.text[:500]}")

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return count * size, elapsed


WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '{"kind":"noop","args":{"n":1}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %s"
"""


def single_wrk(base: str, token: str, clients: int, seconds: float) -> tuple[int, float]:
    """The same load from wrk, a separate C process: the Python client above tops out
    long before the server does on this machine."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(WRK_SCRIPT % token)
        script.flush()
        duration = max(1, round(seconds))
        cmd = ["wrk", f"-t{min(clients, 2)}", f"-c{clients}", f"-d{duration}s"]
        out = subprocess.run(
            [*cmd, "-s", script.name, base + "/v1/jobs"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    if "Non-2xx" in out:
        raise SystemExit(f"wrk saw errors:\n{out}")
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return requests, float(duration)


def run(base: str, token: str, args: argparse.Namespace) -> None:
    use_wrk = shutil.which("wrk") is not None and not args.python_client
    print(f"load generator: {'wrk' if use_wrk else 'httpx (asyncio, in-process)'}")
    for clients in (1, 50):
        if use_wrk:
            n, elapsed = single_wrk(base, token, clients, args.seconds)
        else:
            n, elapsed = asyncio.run(single(base, token, clients, args.seconds))
        rate = n / elapsed
        print(
            f"single POST /v1/jobs, {clients:>2} client(s): {rate:8.0f} req/s "
            f"({n} in {elapsed:.1f} s)"
        )
    for clients in (1, 4):
        n, elapsed = asyncio.run(batches(base, token, args.batches, args.batch_size, clients))
        print(
            f"POST /v1/jobs/batch ({args.batch_size}/batch), {clients} client(s): "
            f"{n / elapsed:8.0f} jobs/s ({n} in {elapsed:.1f} s)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running API (skips starting one)")
    parser.add_argument("--token", default=TOKEN)
    parser.add_argument("--dsn", default=os.environ.get("BROKER_DATABASE_URL", DEFAULT_DSN))
    parser.add_argument("--database", default="broker_bench_api")
    parser.add_argument("--server-workers", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument(
        "--python-client",
        action="store_true",
        help="use httpx for single enqueues even if wrk is installed",
    )
    args = parser.parse_args()
    if args.url:
        run(args.url, args.token, args)
        return
    with (
        scratch_database(args.dsn, args.database) as db_url,
        api_server(db_url, args.server_workers) as base,
    ):
        print(f"server: broker api --workers {args.server_workers} (uvicorn) at {base}")
        run(base, TOKEN, args)


if __name__ == "__main__":
    main()
