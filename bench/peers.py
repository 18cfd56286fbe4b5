"""Side by side: pg-broker against pgqueuer (and bare SQL) on the workloads of issue 13.

    python -m bench.peers                                  # every workload, 3 reps
    python -m bench.peers --workload drain,latency --reps 5
    python -m bench.peers --jobs 2000 --seconds 2 --reps 1  # smoke run
    python -m bench.peers --json > peers.json

Needs pgqueuer (`pip install 'pg-broker[bench]'`). Every run gets a fresh scratch
database on the server --dsn names (created, set up with the peer's own installer,
dropped afterwards). Worker and client processes are spawned, open their connections,
say READY and wait; the clock starts when all of them are told GO. Drains are judged
from the database (count of finished jobs, the last finish time in database time), and
enqueue rates from the rows the database holds afterwards, never from what a process
says it did. Reps are interleaved: each workload runs pgqueuer, pg-broker, bare SQL,
then the next rep. bench/README.md describes the protocol and the settings chosen.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from dataclasses import asdict, dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any, LiteralString, TypeVar

import psycopg
from psycopg import sql

from bench._scratch import with_dbname
from broker import Broker, JobSpec, task

if TYPE_CHECKING:
    from pgqueuer import QueueManager

Pipe = multiprocessing.connection.Connection
T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"

PGQUEUER = "pgqueuer"
BROKER = "pg-broker"
BARE = "bare-sql"
PEERS = (PGQUEUER, BROKER, BARE)

DRAIN = "drain"
DRAIN_SYNC = "drain-sync"
ENQUEUE = "enqueue"
ENQUEUE_MANY_CLIENTS = "enqueue-clients"
BULK = "bulk"
LATENCY = "latency"
WORKLOADS = (DRAIN, DRAIN_SYNC, ENQUEUE, ENQUEUE_MANY_CLIENTS, BULK, LATENCY)
# Which peers each workload has: pg-broker and pgqueuer everywhere, bare SQL where the
# issue's table has a bare-SQL figure. pgqueuer 1.6 rejects plain `def` entrypoints, so
# its drain-sync figure is an async entrypoint running the def in asyncio.to_thread, the
# way its error message tells users to.
WORKLOAD_PEERS: dict[str, tuple[str, ...]] = {
    DRAIN: PEERS,
    DRAIN_SYNC: (PGQUEUER, BROKER),
    ENQUEUE: PEERS,
    ENQUEUE_MANY_CLIENTS: PEERS,
    BULK: PEERS,
    LATENCY: (PGQUEUER, BROKER),
}

QUEUE = "bench"
PGQ_ENTRYPOINT = "noop"
# pgqueuer's batch_size: how many jobs one dequeue takes, and how many completions its
# log buffer collects before it writes them. 100 is the claim size pg-broker's 100 slots
# give and the bare-SQL loop uses; pgqueuer's own default (10) drained 2-4x slower in
# smoke runs on a loaded 2-core machine (bench/README.md).
PGQ_BATCH_SIZE = 100
FILL_CHUNK = 5_000
# The bare-SQL drain claims and completes this many jobs per statement, as the reference
# bound (/work/shared/reference/fenced_bound.py) does.
BARE_BATCH = 100
# Idle workers get this long after GO to open their LISTEN connections before the first
# latency job is enqueued.
IDLE_SETTLE = 1.0
HANDSHAKE_TIMEOUT = 120.0
STOP_TIMEOUT = 30.0
POLL = 0.05


# --- the pg-broker tasks (registered in every process that imports this module) --------

# Handler start times of the latency workload, by job number, sent to the parent at exit.
_STARTS: dict[int, float] = {}


@task("peers_noop", queue=QUEUE)
async def peers_noop(i: int = 0) -> None:
    """Does nothing: the cost measured is the broker's."""


@task("peers_noop_sync", queue=QUEUE)
def peers_noop_sync(i: int = 0) -> None:
    """Does nothing, as a plain def (run in the worker's thread pool)."""


@task("peers_started", queue=QUEUE)
async def peers_started(i: int = 0) -> None:
    """Notes when it started: the latency measured is enqueue() returned -> this line."""
    _STARTS[i] = time.time()


def _noop() -> None:
    """The plain def pgqueuer's drain-sync entrypoint hands to a thread."""


# --- options ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    dsn: str
    workloads: tuple[str, ...]
    peers: tuple[str, ...]
    reps: int
    jobs: int
    processes: int
    concurrency: int
    pgq_batch_size: int
    seconds: float
    clients: int
    batch: int
    latency_jobs: int
    gap: float
    as_json: bool


def parse_options(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--dsn",
        default=os.environ.get("BROKER_BENCH_DSN", DEFAULT_DSN),
        help="server to create the scratch databases on (the user needs CREATEDB)",
    )
    parser.add_argument(
        "--workload",
        default="all",
        help=f"comma-separated, from {', '.join(WORKLOADS)} (default all)",
    )
    parser.add_argument(
        "--peers", default=",".join(PEERS), help="comma-separated subset of " + ", ".join(PEERS)
    )
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs per drain and bulk run")
    parser.add_argument("--processes", type=int, default=2, help="worker processes per drain")
    parser.add_argument(
        "--concurrency", type=int, default=100, help="pg-broker handler slots per worker"
    )
    parser.add_argument(
        "--pgq-batch-size",
        type=int,
        default=PGQ_BATCH_SIZE,
        help=f"pgqueuer QueueManager.run batch_size (default {PGQ_BATCH_SIZE})",
    )
    parser.add_argument(
        "--seconds", type=float, default=5.0, help="length of the one-per-call enqueue runs"
    )
    parser.add_argument("--clients", type=int, default=10, help="clients of enqueue-clients")
    parser.add_argument("--batch", type=int, default=1_000, help="jobs per bulk enqueue call")
    parser.add_argument("--latency-jobs", type=int, default=200)
    parser.add_argument("--gap", type=float, default=0.02, help="seconds between latency jobs")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)
    workloads = WORKLOADS if args.workload == "all" else tuple(_csv(args.workload))
    peers = tuple(_csv(args.peers))
    for name, known in (("workload", WORKLOADS), ("peer", PEERS)):
        chosen = workloads if name == "workload" else peers
        unknown = [c for c in chosen if c not in known]
        if unknown:
            parser.error(f"unknown {name} {', '.join(unknown)}; choose from {', '.join(known)}")
    if args.reps < 1 or args.jobs < 1 or args.processes < 1 or args.clients < 1:
        parser.error("--reps, --jobs, --processes and --clients must be at least 1")
    return Options(
        dsn=args.dsn,
        workloads=workloads,
        peers=peers,
        reps=args.reps,
        jobs=args.jobs,
        processes=args.processes,
        concurrency=args.concurrency,
        pgq_batch_size=args.pgq_batch_size,
        seconds=args.seconds,
        clients=args.clients,
        batch=args.batch,
        latency_jobs=args.latency_jobs,
        gap=args.gap,
        as_json=args.json,
    )


def _csv(raw: str) -> list[str]:
    return [part.strip() for part in raw.split(",") if part.strip()]


# --- scratch databases -----------------------------------------------------------------

BARE_SCHEMA: LiteralString = """
CREATE TABLE bare_jobs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue text NOT NULL DEFAULT 'bench',
    kind text NOT NULL,
    args jsonb NOT NULL DEFAULT '{}',
    priority int NOT NULL DEFAULT 0,
    state text NOT NULL DEFAULT 'queued',
    run_at timestamptz NOT NULL DEFAULT now(),
    attempts int NOT NULL DEFAULT 0,
    lease_epoch bigint NOT NULL DEFAULT 0,
    lease_expires_at timestamptz,
    worker_id text,
    created_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    finished_at timestamptz
);
CREATE INDEX bare_jobs_claim ON bare_jobs (queue, priority DESC, run_at, id)
    WHERE state = 'queued';
CREATE INDEX bare_jobs_running ON bare_jobs (id) WHERE state = 'running'
"""

# Per peer: the tables a run settles (VACUUM ANALYZE) before its clock starts, the
# count of stored jobs, and the count and last finish (epoch seconds, database time) of
# finished ones. pgqueuer deletes a finished job and logs it as 'successful'.
TABLES: dict[str, tuple[LiteralString, ...]] = {
    BROKER: ("broker.jobs", "broker.job_events"),
    PGQUEUER: ("pgqueuer", "pgqueuer_log"),
    BARE: ("bare_jobs",),
}
STORED: dict[str, LiteralString] = {
    BROKER: "SELECT count(*) FROM broker.jobs",
    PGQUEUER: "SELECT count(*) FROM pgqueuer",
    BARE: "SELECT count(*) FROM bare_jobs",
}
FINISHED: dict[str, LiteralString] = {
    BROKER: "SELECT count(*), extract(epoch FROM max(finished_at))::float8"
    " FROM broker.jobs WHERE state = 'succeeded'",
    PGQUEUER: "SELECT count(*), extract(epoch FROM max(created))::float8"
    " FROM pgqueuer_log WHERE status = 'successful'",
    BARE: "SELECT count(*), extract(epoch FROM max(finished_at))::float8"
    " FROM bare_jobs WHERE state = 'succeeded'",
}


@contextlib.contextmanager
def fresh_database(dsn: str, peer: str) -> Iterator[str]:
    """A new database next to `dsn`, set up for `peer` with its own installer: pg-broker
    migrated with broker.migrate.upgrade, pgqueuer installed with Queries.install (what
    `pgq install` runs), bare SQL one table. Dropped on exit. Yields its URL."""
    name = f"peers_{peer.replace('-', '_')}_{os.getpid()}"
    drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(drop)
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = with_dbname(dsn, name)
    try:
        if peer == BROKER:
            from broker.migrate import upgrade

            upgrade(url)
        elif peer == PGQUEUER:
            _run_pgq(_pgq_install(url))
        else:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(BARE_SCHEMA)
        yield url
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(drop)


def settle(url: str, peer: str) -> None:
    """VACUUM ANALYZE the peer's tables and CHECKPOINT, as the reference bound does."""
    with psycopg.connect(url, autocommit=True) as conn:
        for table in TABLES[peer]:
            conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(*table.split("."))))
        conn.execute("CHECKPOINT")


def stored(url: str, peer: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(STORED[peer]).fetchone()
    assert row is not None
    return int(row[0])


def fill(url: str, peer: str, kind: str, jobs: int) -> None:
    """Queue `jobs` jobs of `kind` (pg-broker) or pgqueuer's entrypoint before a drain."""
    if peer == BROKER:
        with Broker.connect(url, max_size=1) as client:
            for start in range(0, jobs, FILL_CHUNK):
                count = min(FILL_CHUNK, jobs - start)
                client.enqueue_many(
                    [JobSpec(kind, {"i": start + n}, queue=QUEUE) for n in range(count)]
                )
    elif peer == PGQUEUER:
        _run_pgq(_pgq_fill(url, jobs))
    else:
        with (
            psycopg.connect(url, autocommit=True) as conn,
            conn.cursor() as cur,
            cur.copy("COPY bare_jobs (kind, args) FROM STDIN") as copy,
        ):
            for n in range(jobs):
                copy.write_row(("noop", f'{{"i": {n}}}'))


# --- pgqueuer (imported only where it is used, so the module loads without it) --------


def _run_pgq(coro: Coroutine[Any, Any, T]) -> T:
    """Run pgqueuer code on the loop its own CLI uses (uvloop when installed)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


@contextlib.asynccontextmanager
async def _pgq_queries(url: str) -> AsyncIterator[Any]:
    """pgqueuer's Queries on one asyncpg connection (its driver leaves closing to us)."""
    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries

    conn = await asyncpg.connect(url)
    try:
        yield Queries(AsyncpgDriver(conn))
    finally:
        await conn.close()


async def _pgq_install(url: str) -> None:
    async with _pgq_queries(url) as queries:
        await queries.install()


async def _pgq_fill(url: str, jobs: int) -> None:
    async with _pgq_queries(url) as queries:
        for start in range(0, jobs, FILL_CHUNK):
            count = min(FILL_CHUNK, jobs - start)
            payloads = [f'{{"i": {start + n}}}'.encode() for n in range(count)]
            await queries.enqueue([PGQ_ENTRYPOINT] * count, payloads, [0] * count)


# --- READY / GO ------------------------------------------------------------------------


class Crew:
    """Spawned processes that each connect, say READY, wait for GO, then do their part.

    `stop()` sends SIGTERM (workers shut down as on a deploy) and collects what each
    sends back on its way out.
    """

    def __init__(
        self,
        target: Callable[..., None],
        args: Sequence[tuple[Any, ...]],
        scratch_dir: str | None = None,
    ) -> None:
        # Removed at stop(): pg-broker workers keep their identity files there.
        self.scratch_dir = scratch_dir
        spawn = multiprocessing.get_context("spawn")
        self.pipes: list[Pipe] = []
        self.procs: list[BaseProcess] = []
        for proc_args in args:
            ours, theirs = spawn.Pipe()
            proc = spawn.Process(target=target, args=(theirs, *proc_args), daemon=True)
            proc.start()
            theirs.close()
            self.pipes.append(ours)
            self.procs.append(proc)
        for pipe, started in zip(self.pipes, self.procs, strict=True):
            said = None
            with contextlib.suppress(EOFError):
                said = pipe.recv() if pipe.poll(HANDSHAKE_TIMEOUT) else None
            if said != "ready":
                self.stop()
                raise SystemExit(f"process {started.pid} never said READY ({started.exitcode=})")

    def go(self) -> float:
        """Release every process at once; returns the moment (time.time())."""
        now = time.time()
        for pipe in self.pipes:
            pipe.send(now)
        return now

    def check(self) -> None:
        for proc in self.procs:
            if proc.exitcode not in (None, 0):
                raise SystemExit(f"process {proc.pid} exited with {proc.exitcode}")

    def results(self, timeout: float) -> list[Any]:
        """What each process sent when it finished on its own."""
        out = []
        for pipe in self.pipes:
            if not pipe.poll(timeout):
                raise SystemExit("a client did not finish in time")
            out.append(pipe.recv())
        return out

    def stop(self) -> list[Any]:
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()
        sent = []
        for pipe, proc in zip(self.pipes, self.procs, strict=True):
            with contextlib.suppress(EOFError, OSError):
                if pipe.poll(STOP_TIMEOUT):
                    sent.append(pipe.recv())
            proc.join(STOP_TIMEOUT)
            if proc.is_alive():
                proc.kill()
                proc.join()
            pipe.close()
        if self.scratch_dir is not None:
            shutil.rmtree(self.scratch_dir, ignore_errors=True)
        return sent


def _ready(pipe: Pipe) -> float:
    """The child's half of the handshake: say READY, block until GO; returns GO's time."""
    pipe.send("ready")
    go: float = pipe.recv()
    return go


# --- worker processes ------------------------------------------------------------------


def broker_worker(pipe: Pipe, url: str, concurrency: int, seq: int, state_dir: str) -> None:
    asyncio.run(_broker_worker(pipe, url, concurrency, seq, state_dir))


async def _broker_worker(pipe: Pipe, url: str, concurrency: int, seq: int, state_dir: str) -> None:
    from broker.config import Settings
    from broker.lease import db_clock
    from broker.pruner import PrunerConfig
    from broker.worker import Worker, WorkerConfig
    from broker.worker._conn import Connection

    settings = Settings(database_url=url, state_dir=Path(state_dir))
    config = WorkerConfig(
        database_url=url,
        queues=(QUEUE,),
        concurrency=concurrency,
        seq=seq,
        settings=settings,
        pruner=PrunerConfig.from_env(),
    )
    opened: list[Connection] = []

    def connect(name: str) -> Connection:
        conn = Connection(url, settings.schema, name, settings.prepare_threshold)
        opened.append(conn)
        return conn

    # The worker's own connection class, opened before READY (psycopg connects lazily),
    # so both peers' connects are outside the clock. Passing `connect` leaves out the
    # scheduler service, which has nothing to do here (and QueueManager has none).
    runtime = Worker(config, connect=connect)
    for conn in opened:
        await conn.run(db_clock())
    runtime.install_signal_handlers()
    _ready(pipe)
    await runtime.run()
    pipe.send(dict(_STARTS))


def pgq_worker(pipe: Pipe, url: str, handler: str, batch_size: int) -> None:
    _run_pgq(_pgq_worker(pipe, url, handler, batch_size))


async def _pgq_worker(pipe: Pipe, url: str, handler: str, batch_size: int) -> None:
    from pgqueuer import QueueManager

    async with _pgq_queries(url) as queries:
        manager = QueueManager(queries)
        starts = await _pgq_serve(pipe, manager, handler, batch_size)
    pipe.send(starts)


async def _pgq_serve(
    pipe: Pipe, manager: QueueManager, handler: str, batch_size: int
) -> dict[int, float]:
    from pgqueuer import Job

    starts: dict[int, float] = {}

    if handler == "async":

        @manager.entrypoint(PGQ_ENTRYPOINT)
        async def noop(job: Job) -> None:
            pass

    elif handler == "thread":

        @manager.entrypoint(PGQ_ENTRYPOINT)
        async def noop_in_thread(job: Job) -> None:
            await asyncio.to_thread(_noop)

    else:

        @manager.entrypoint(PGQ_ENTRYPOINT)
        async def started(job: Job) -> None:
            starts[int(job.payload or b"0")] = time.time()

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, manager.shutdown.set)
    _ready(pipe)
    await manager.run(batch_size=batch_size)
    return starts


def bare_worker(pipe: Pipe, url: str, seq: int) -> None:
    """The reference bound's loop: claim BARE_BATCH with an epoch, fenced complete."""
    claim: LiteralString = """
        WITH next AS (
            SELECT id FROM bare_jobs
            WHERE state = 'queued' AND queue = 'bench' AND run_at <= now()
            ORDER BY priority DESC, run_at, id
            LIMIT %s FOR UPDATE SKIP LOCKED
        )
        UPDATE bare_jobs j SET state = 'running', attempts = attempts + 1,
            lease_epoch = lease_epoch + 1, lease_expires_at = now() + interval '15 s',
            worker_id = %s, started_at = now()
        FROM next WHERE j.id = next.id
        RETURNING j.id, j.lease_epoch"""
    complete: LiteralString = """
        UPDATE bare_jobs j SET state = 'succeeded', finished_at = now(),
            lease_expires_at = NULL
        FROM unnest(%s::bigint[], %s::bigint[]) AS d(id, epoch)
        WHERE j.id = d.id AND j.lease_epoch = d.epoch AND j.state = 'running'"""
    with psycopg.connect(url, autocommit=True) as conn:
        _ready(pipe)
        while rows := conn.execute(claim, (BARE_BATCH, f"bare{seq}")).fetchall():
            conn.execute(complete, ([r[0] for r in rows], [r[1] for r in rows]))
    pipe.send({})


def start_workers(peer: str, url: str, opts: Options, handler: str, count: int) -> Crew:
    """`count` worker processes of `peer`, READY and waiting for GO. `handler` is
    async, sync (a plain def; pgqueuer: asyncio.to_thread) or started (latency)."""
    if peer == BROKER:
        state_dir = tempfile.mkdtemp(prefix="peers-broker-")
        args = [(url, opts.concurrency, seq, state_dir) for seq in range(1, count + 1)]
        return Crew(broker_worker, args, scratch_dir=state_dir)
    if peer == PGQUEUER:
        pgq_handler = {"async": "async", "sync": "thread"}.get(handler, "started")
        return Crew(pgq_worker, [(url, pgq_handler, opts.pgq_batch_size)] * count)
    return Crew(bare_worker, [(url, seq) for seq in range(1, count + 1)])


def wait_finished(
    conn: psycopg.Connection[Any], peer: str, jobs: int, crew: Crew, timeout: float = 600
) -> float:
    """Poll the database until `jobs` jobs have finished; returns the last finish time
    (epoch seconds, database clock)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = conn.execute(FINISHED[peer]).fetchone()
        assert row is not None
        if row[0] >= jobs:
            return float(row[1])
        crew.check()
        time.sleep(POLL)
    raise SystemExit(f"{peer}: {jobs} jobs did not finish within {timeout:.0f} s")


def db_now(conn: psycopg.Connection[Any]) -> float:
    row = conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()
    assert row is not None
    return float(row[0])


# --- client processes ------------------------------------------------------------------


def broker_client(pipe: Pipe, url: str, mode: str, seconds: float, jobs: int, batch: int) -> None:
    with Broker.connect(url, max_size=1) as client:
        client.db_clock()  # the pool's connection is open before READY
        if mode == "bulk":
            calls = [
                [
                    JobSpec("peers_noop", {"i": n}, queue=QUEUE)
                    for n in range(s, min(s + batch, jobs))
                ]
                for s in range(0, jobs, batch)
            ]
            _ready(pipe)
            for specs in calls:
                client.enqueue_many(specs)
            pipe.send((jobs, time.time()))
            return
        deadline = _ready(pipe) + seconds
        n = 0
        while time.time() < deadline:
            client.enqueue("peers_noop", {"i": n}, queue=QUEUE)
            n += 1
        pipe.send((n, time.time()))


def pgq_client(pipe: Pipe, url: str, mode: str, seconds: float, jobs: int, batch: int) -> None:
    _run_pgq(_pgq_client(pipe, url, mode, seconds, jobs, batch))


async def _pgq_client(
    pipe: Pipe, url: str, mode: str, seconds: float, jobs: int, batch: int
) -> None:
    async with _pgq_queries(url) as queries:
        if mode == "bulk":
            calls = []
            for start in range(0, jobs, batch):
                count = min(batch, jobs - start)
                payloads = [f'{{"i": {start + n}}}'.encode() for n in range(count)]
                calls.append(([PGQ_ENTRYPOINT] * count, payloads, [0] * count))
            _ready(pipe)
            for entrypoints, payloads, priorities in calls:
                await queries.enqueue(entrypoints, payloads, priorities)
            pipe.send((jobs, time.time()))
            return
        deadline = _ready(pipe) + seconds
        n = 0
        while time.time() < deadline:
            await queries.enqueue(PGQ_ENTRYPOINT, f'{{"i": {n}}}'.encode(), 0)
            n += 1
        pipe.send((n, time.time()))


def bare_client(pipe: Pipe, url: str, mode: str, seconds: float, jobs: int, batch: int) -> None:
    """One autocommit INSERT per call, or (bulk) one COPY of every job."""
    with psycopg.connect(url, autocommit=True) as conn:
        if mode == "bulk":
            rows = [("noop", f'{{"i": {n}}}') for n in range(jobs)]
            _ready(pipe)
            with conn.cursor() as cur, cur.copy("COPY bare_jobs (kind, args) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            pipe.send((jobs, time.time()))
            return
        deadline = _ready(pipe) + seconds
        n = 0
        while time.time() < deadline:
            conn.execute(
                "INSERT INTO bare_jobs (kind, args) VALUES ('noop', %s::jsonb)", (f'{{"i": {n}}}',)
            )
            n += 1
        pipe.send((n, time.time()))


CLIENTS: dict[str, Callable[..., None]] = {
    BROKER: broker_client,
    PGQUEUER: pgq_client,
    BARE: bare_client,
}


# --- workloads -------------------------------------------------------------------------


def run_drain(peer: str, opts: Options, handler: str) -> float:
    """jobs/s: --jobs pre-queued jobs drained by --processes workers, GO to last finish."""
    kind = "peers_noop_sync" if handler == "sync" else "peers_noop"
    with fresh_database(opts.dsn, peer) as url:
        fill(url, peer, kind, opts.jobs)
        settle(url, peer)
        crew = start_workers(peer, url, opts, handler, opts.processes)
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                # GO in database time, so the rate is one clock's difference even on a
                # remote server; the processes are told right after.
                go = db_now(conn)
                crew.go()
                last = wait_finished(conn, peer, opts.jobs, crew)
        finally:
            crew.stop()
    return opts.jobs / (last - go)


def run_enqueue(peer: str, opts: Options, clients: int, mode: str) -> float:
    """jobs/s: rows the database holds afterwards over GO -> the last client's end."""
    with fresh_database(opts.dsn, peer) as url:
        settle(url, peer)
        args = [(url, mode, opts.seconds, opts.jobs, opts.batch)] * clients
        crew = Crew(CLIENTS[peer], args)
        try:
            go = crew.go()
            ends = crew.results(timeout=opts.seconds + 600)
        finally:
            crew.stop()
        rows = stored(url, peer)
    if mode == "bulk" and rows != opts.jobs:
        raise SystemExit(f"{peer}: bulk enqueue stored {rows} of {opts.jobs} jobs")
    last: float = max(end for _, end in ends)
    return rows / (last - go)


def run_latency(peer: str, opts: Options) -> dict[str, float]:
    """ms from enqueue() returning to the handler starting, jobs enqueued one at a time
    --gap apart to one idle worker process."""
    with fresh_database(opts.dsn, peer) as url:
        settle(url, peer)
        crew = start_workers(peer, url, opts, "started", 1)
        try:
            crew.go()
            time.sleep(IDLE_SETTLE)
            if peer == BROKER:
                returned = _broker_spaced(url, opts.latency_jobs, opts.gap)
            else:
                returned = _run_pgq(_pgq_spaced(url, opts.latency_jobs, opts.gap))
            with psycopg.connect(url, autocommit=True) as conn:
                wait_finished(conn, peer, opts.latency_jobs, crew)
        finally:
            sent = crew.stop()
    starts: dict[int, float] = {}
    for part in sent:
        starts.update(part)
    ms = [(starts[i] - returned[i]) * 1000 for i in returned]
    return {f"p{q}": percentile(ms, q) for q in (50, 95, 99)}


def _broker_spaced(url: str, jobs: int, gap: float) -> dict[int, float]:
    returned = {}
    with Broker.connect(url, max_size=1) as client:
        client.db_clock()
        for i in range(jobs):
            client.enqueue("peers_started", {"i": i}, queue=QUEUE)
            returned[i] = time.time()
            time.sleep(gap)
    return returned


async def _pgq_spaced(url: str, jobs: int, gap: float) -> dict[int, float]:
    returned = {}
    async with _pgq_queries(url) as queries:
        for i in range(jobs):
            await queries.enqueue(PGQ_ENTRYPOINT, str(i).encode(), 0)
            returned[i] = time.time()
            await asyncio.sleep(gap)
    return returned


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile, as bench/pickup_latency.py computes it."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
    return ordered[index]


def run_one(workload: str, peer: str, opts: Options) -> Any:
    if workload == DRAIN:
        return run_drain(peer, opts, "async")
    if workload == DRAIN_SYNC:
        return run_drain(peer, opts, "sync")
    if workload == ENQUEUE:
        return run_enqueue(peer, opts, 1, "single")
    if workload == ENQUEUE_MANY_CLIENTS:
        return run_enqueue(peer, opts, opts.clients, "single")
    if workload == BULK:
        return run_enqueue(peer, opts, 1, "bulk")
    return run_latency(peer, opts)


# --- report ----------------------------------------------------------------------------


def median_of(runs: list[Any]) -> Any:
    if isinstance(runs[0], dict):
        return {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    return statistics.median(runs)


def ratios(medians: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """pg-broker's median over each peer's, per workload: for throughput higher is
    better, for latency percentiles lower is."""
    out: dict[str, dict[str, float]] = {}
    for workload, by_peer in medians.items():
        ours = by_peer.get(BROKER)
        if ours is None:
            continue
        entry: dict[str, float] = {}
        if workload == LATENCY:
            if PGQUEUER in by_peer:
                for key, value in ours.items():
                    entry[f"{key}_of_pgqueuer"] = value / by_peer[PGQUEUER][key]
        else:
            if PGQUEUER in by_peer:
                entry["of_pgqueuer"] = ours / by_peer[PGQUEUER]
            if BARE in by_peer:
                entry["of_bare_sql"] = ours / by_peer[BARE]
            if workload == DRAIN_SYNC and PGQUEUER in medians.get(DRAIN, {}):
                entry["of_pgqueuer_async"] = ours / medians[DRAIN][PGQUEUER]
        out[workload] = entry
    return out


def describe(workload: str, opts: Options) -> str:
    return {
        DRAIN: f"drain {opts.jobs:,} no-op jobs, {opts.processes} processes, async handler",
        DRAIN_SYNC: "same, plain `def` handler (pgqueuer: asyncio.to_thread)",
        ENQUEUE: f"one enqueue per call, one client, {opts.seconds:g} s",
        ENQUEUE_MANY_CLIENTS: f"one enqueue per call, {opts.clients} client processes",
        BULK: f"bulk enqueue {opts.jobs:,} jobs, calls of {opts.batch:,}"
        f" (bare SQL: one COPY of {opts.jobs:,})",
        LATENCY: f"idle pickup latency p50 / p95 / p99, {opts.latency_jobs} jobs"
        f" {opts.gap * 1000:g} ms apart",
    }[workload]


def cell(workload: str, value: Any, peer: str = "") -> str:
    if value is None:
        return "-"
    if workload == LATENCY:
        return " / ".join(f"{value[k]:.1f}" for k in ("p50", "p95", "p99")) + " ms"
    bare_insert = peer == BARE and workload in (ENQUEUE, ENQUEUE_MANY_CLIENTS)
    suffix = " (INSERT)" if bare_insert else ""
    return f"{value:,.0f} /s{suffix}"


def ratio_cell(workload: str, entry: dict[str, float]) -> str:
    if workload == LATENCY:
        if not entry:
            return "-"
        shown = " / ".join(f"{value:.2f}" for value in entry.values())
        return f"{shown}x of pgqueuer's (lower is better)"
    parts = []
    if "of_pgqueuer_async" in entry:
        parts.append(f"{entry['of_pgqueuer_async']:.2f}x of pgqueuer's async")
    if "of_pgqueuer" in entry:
        parts.append(f"{entry['of_pgqueuer']:.2f}x" + (" of its to_thread" if parts else ""))
    if "of_bare_sql" in entry:
        parts.append(f"{entry['of_bare_sql']:.2f} of bare SQL")
    return "; ".join(parts) or "-"


def table(opts: Options, medians: dict[str, dict[str, Any]]) -> str:
    ratio = ratios(medians)
    lines = [
        "| workload | pgqueuer | pg-broker | bare SQL | ratio (pg-broker) |",
        "|---|---|---|---|---|",
    ]
    for workload, by_peer in medians.items():
        cells = [cell(workload, by_peer.get(peer), peer) for peer in (PGQUEUER, BROKER, BARE)]
        row = [describe(workload, opts), *cells, ratio_cell(workload, ratio.get(workload, {}))]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def versions(dsn: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("pgqueuer", "asyncpg", "psycopg", "pg-broker"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "-"
    git = subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    )
    found["pg-broker checkout"] = git.stdout.strip() or "-"
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    found["postgresql"] = str(row[0]) if row else "-"
    found["python"] = sys.version.split()[0]
    return found


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_options(argv)
    if PGQUEUER in opts.peers:
        try:
            import asyncpg  # noqa: F401
            import pgqueuer  # noqa: F401
        except ImportError:
            print("pgqueuer is not installed: pip install 'pg-broker[bench]'", file=sys.stderr)
            return 2
    runs: dict[str, dict[str, list[Any]]] = {}
    started = time.time()
    for workload in opts.workloads:
        peers = [p for p in WORKLOAD_PEERS[workload] if p in opts.peers]
        runs[workload] = {peer: [] for peer in peers}
        for rep in range(1, opts.reps + 1):
            for peer in peers:
                result = run_one(workload, peer, opts)
                runs[workload][peer].append(result)
                shown = cell(workload, result, peer)
                print(f"{workload} rep {rep} {peer}: {shown}", file=sys.stderr, flush=True)
    medians = {
        workload: {peer: median_of(results) for peer, results in by_peer.items() if results}
        for workload, by_peer in runs.items()
    }
    found = versions(opts.dsn)
    if opts.as_json:
        report = {
            "options": {k: v for k, v in asdict(opts).items() if k not in ("dsn", "as_json")},
            "versions": found,
            "started": started,
            "seconds": time.time() - started,
            "runs": runs,
            "medians": medians,
            "ratios": ratios(medians),
        }
        print(json.dumps(report, indent=2))
    else:
        print(", ".join(f"{k} {v}" for k, v in found.items()))
        print(f"medians of {opts.reps} interleaved rep(s)\n")
        print(table(opts, medians))
    return 0


if __name__ == "__main__":
    sys.exit(main())
