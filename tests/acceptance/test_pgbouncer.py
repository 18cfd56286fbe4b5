"""PgBouncer in transaction mode in front of the broker: a real pgbouncer (Debian 12's 1.18)
started per test on a free port, real worker processes and the API behind it.

What must hold (issue 14, docs/scaling.md "PgBouncer"): workers drain, the API serves,
pickup stays NOTIFY-fast with BROKER_LISTEN_URL, a cancel reaches a running handler; and
what happens without BROKER_PREPARE_THRESHOLD=none (1.18 keeps no prepared statements
across transactions) or without BROKER_LISTEN_URL.

Without a pgbouncer binary the tests skip, unless CI is set: CI installs it (.ci/run), so
there a missing binary fails.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from worker_harness import ROOT, WorkerProcess, scalar, states, wait_for

from broker import AsyncBroker, Broker, Job, JobSpec, lease
from broker import _executor as executor
from broker._listen_probe import PROBE_TIMEOUT
from broker.config import Settings
from broker.errors import POOLER_HINT, DatabaseUnavailable

# The one line a LISTEN connection that notifications do not reach logs (_listen_probe).
NO_NOTIFICATIONS = "notifications do not reach the LISTEN connection"
# pgbouncer refuses to run as root; as root the test runs it as this user, or as the owner
# of the server's socket directory (the embedded server's is private to its own user).
PGBOUNCER_USER = "nobody"
START_TIMEOUT = 15.0


def _pgbouncer_binary() -> str | None:
    return shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.access(p, os.X_OK)), None
    )


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Bouncer:
    """A running pgbouncer: `url` reaches the test database through it (transaction
    pooling), `direct` without it, `admin` is its console (SHOW CLIENTS, ...)."""

    url: str
    direct: str
    admin: str
    log: Path

    def clients(self) -> list[dict[str, Any]]:
        """SHOW CLIENTS: the client connections pgbouncer holds right now."""
        # The admin console speaks the simple query protocol only, which ClientCursor uses.
        with psycopg.connect(
            self.admin, autocommit=True, cursor_factory=psycopg.ClientCursor
        ) as conn:
            cur = conn.execute("SHOW CLIENTS")
            names = [d.name for d in cur.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def require_pgbouncer() -> str:
    """The pgbouncer binary; skips the test without one, fails it when CI is set."""
    binary = _pgbouncer_binary()
    if binary is None:
        reason = "pgbouncer is not installed (apt-get install pgbouncer)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI is set, so this is a failure")
        pytest.skip(f"{reason}; set CI=1 to make this a failure")
    return binary


@pytest.fixture
def bouncer(db_url: str) -> Iterator[Bouncer]:
    """pgbouncer in transaction mode in front of the test's database."""
    binary = require_pgbouncer()
    info = conninfo_to_dict(db_url)
    # libpq's own resolution (a socket directory for the embedded server, 127.0.0.1 for the
    # local one) is what pgbouncer must dial.
    with psycopg.connect(db_url) as probe:
        host, port, user = probe.info.host, probe.info.port, probe.info.user
        password = probe.info.password
    dbname = str(info["dbname"])
    listen_port = _free_port()
    workdir = Path(tempfile.mkdtemp(prefix="broker-pgbouncer-"))
    server = f"host={host} port={port} dbname={dbname} user={user}"
    if password:
        server += f" password={password}"
    (workdir / "pgbouncer.ini").write_text(
        f"""[databases]
{dbname} = {server}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen_port}
unix_socket_dir =
auth_type = trust
auth_file = {workdir}/users.txt
admin_users = {user}
pool_mode = transaction
default_pool_size = 8
max_client_conn = 200
logfile = {workdir}/pgbouncer.log
pidfile = {workdir}/pgbouncer.pid
"""
    )
    (workdir / "users.txt").write_text(f'"{user}" ""\n')
    cmd = [binary, str(workdir / "pgbouncer.ini")]
    if os.geteuid() == 0:
        owner = os.stat(host).st_uid if host.startswith("/") else 0
        account = pwd.getpwuid(owner) if owner else pwd.getpwnam(PGBOUNCER_USER)
        for path in [workdir, *workdir.iterdir()]:
            os.chown(path, account.pw_uid, account.pw_gid)
        cmd[1:1] = ["-u", account.pw_name]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    auth = quote(str(user), safe="")
    base = f"postgresql://{auth}@127.0.0.1:{listen_port}"
    found = Bouncer(
        url=f"{base}/{dbname}",
        direct=db_url,
        admin=f"{base}/pgbouncer",
        log=workdir / "pgbouncer.log",
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                psycopg.connect(found.url, connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log = found.log.read_text() if found.log.exists() else ""
                    raise RuntimeError(f"pgbouncer did not start:\n{log}") from None
                time.sleep(0.1)
        yield found
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def pooled_env(bouncer: Bouncer, **extra: str) -> dict[str, str]:
    """A worker's environment for transaction pooling as docs/scaling.md prescribes."""
    return {
        "BROKER_LISTEN_URL": bouncer.direct,
        "BROKER_PREPARE_THRESHOLD": "none",
        **extra,
    }


def through_bouncer(bouncer: Bouncer, name_prefix: str) -> list[dict[str, Any]]:
    return [c for c in bouncer.clients() if str(c["application_name"]).startswith(name_prefix)]


def direct_sessions(url: str, name_prefix: str) -> int:
    """Sessions on the server whose client is not pgbouncer (application_name prefix)."""
    return int(
        scalar(
            url,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s"
            " AND datname = current_database()",
            [name_prefix + "%"],
        )
    )


# --- workers ----------------------------------------------------------------------------


def test_worker_drains_through_pgbouncer(bouncer: Bouncer, broker: Broker, tmp_path: Path) -> None:
    n = 300
    broker.enqueue_many([JobSpec("noop") for _ in range(n)])
    with WorkerProcess(
        bouncer.url, tmp_path, ["--concurrency", "20"], **pooled_env(bouncer)
    ) as worker:
        wait_for(
            lambda: states(bouncer.direct).get("succeeded") == n,
            60,
            f"{n} jobs to succeed",
            diagnose=lambda: f"{states(bouncer.direct)}\n{worker.output()}",
        )
        # The lease and work connections are pgbouncer's clients; the LISTEN
        # connection is not (it went to BROKER_LISTEN_URL).
        names = [str(c["application_name"]) for c in through_bouncer(bouncer, "broker ")]
        pooled = {name.split()[1] for name in names}
        assert {"work", "lease"} <= pooled, pooled
        assert "listen" not in pooled
        assert direct_sessions(bouncer.direct, "broker listen ") == 1
        assert worker.stop() == 0
    out = worker.output()
    assert "Traceback" not in out, out
    assert "prepared statement" not in out, out
    assert NO_NOTIFICATIONS not in out, out


def test_pickup_is_notify_fast_with_the_listen_url(
    bouncer: Bouncer, broker: Broker, tmp_path: Path
) -> None:
    poll = 60.0
    with WorkerProcess(
        bouncer.url, tmp_path, ["--poll-interval", str(poll)], **pooled_env(bouncer)
    ) as worker:
        wait_for(
            lambda: direct_sessions(bouncer.direct, "broker listen ") == 1,
            30,
            "the worker's LISTEN connection",
            diagnose=worker.output,
        )
        # Past its first (empty) claims the worker sleeps for the poll interval: only the
        # NOTIFY of the enqueue, on the direct connection, can wake it now.
        time.sleep(1.0)
        started = time.monotonic()
        job = broker.enqueue("noop")
        wait_for(
            lambda: broker.get_job(job.id).state == "succeeded",
            poll / 2,
            "the job to be picked up",
            diagnose=worker.output,
        )
        assert time.monotonic() - started < poll / 4
        assert worker.stop() == 0


def test_cancel_reaches_a_running_handler(bouncer: Bouncer, broker: Broker, tmp_path: Path) -> None:
    marker = tmp_path / "stopped"
    # Heartbeats every lease_ttl / 3 = 20 s: a cancel seen sooner came by NOTIFY.
    with WorkerProcess(
        bouncer.url, tmp_path, **pooled_env(bouncer, BROKER_LEASE_TTL="60")
    ) as worker:
        job = broker.enqueue("await_cancel", {"marker": str(marker)})
        wait_for(
            lambda: broker.get_job(job.id).state == "running",
            30,
            "the job to run",
            diagnose=worker.output,
        )
        time.sleep(0.3)
        asked = time.monotonic()
        assert broker.cancel(job.id) == "running"
        wait_for(marker.exists, 15, "the handler to see the cancel", diagnose=worker.output)
        assert time.monotonic() - asked < 15
        assert marker.read_text() == "cancel requested"
        wait_for(
            lambda: broker.get_job(job.id).state == "cancelled",
            15,
            "the job to be cancelled",
            diagnose=worker.output,
        )
        assert worker.stop() == 0


# --- the API ----------------------------------------------------------------------------


def test_api_serves_through_pgbouncer(bouncer: Bouncer, broker: Broker) -> None:
    from litestar.testing import TestClient

    from api.app import create_app
    from api.config import ApiSettings, parse_tokens

    token = "pgbouncer-test-token"
    settings = Settings(database_url=bouncer.url, listen_url=bouncer.direct, prepare_threshold=None)
    app = create_app(settings, api_settings=ApiSettings(tokens=parse_tokens(token)))
    auth = {"Authorization": f"Bearer {token}"}
    with TestClient(app, raise_server_exceptions=False) as client:
        # Well past psycopg's 5 runs of each statement, from a pool of several connections.
        ids = []
        for i in range(30):
            made = client.post("/v1/jobs", json={"kind": "noop", "args": {"i": i}}, headers=auth)
            assert made.status_code == 201, made.text
            ids.append(made.json()["id"])
        for job_id in ids:
            got = client.get(f"/v1/jobs/{job_id}", headers=auth)
            assert got.status_code == 200, got.text
            assert got.json()["state"] == "queued"
        assert through_bouncer(bouncer, "") != []

        # A wait LISTENs on BROKER_LISTEN_URL; the job ends meanwhile, on another client.
        # With the sweep past the wait, only the notification can end the wait early.
        app.state.runtime.client.wait_sweep = 60.0
        [held] = broker.claim(["default"], 1, "pgbouncer-test:1")
        finisher = threading.Timer(0.5, broker.complete, args=(held, {"ok": True}))
        finisher.start()
        asked = time.monotonic()
        waited = client.get(f"/v1/jobs/{held.job_id}", params={"wait": 30}, headers=auth)
        finisher.join()
        assert waited.status_code == 200, waited.text
        assert waited.json()["state"] == "succeeded"
        assert time.monotonic() - asked < 15
        assert direct_sessions(bouncer.direct, "broker waiters") == 1


def test_sync_wait_listens_on_the_listen_url(bouncer: Bouncer, broker: Broker) -> None:
    with Broker.connect(
        bouncer.url, prepare_threshold=None, listen_url=bouncer.direct, max_size=1
    ) as pooled:
        pooled.wait_sweep = 60.0
        job = pooled.enqueue("noop")
        [held] = broker.claim(["default"], 1, "pgbouncer-test:1")
        assert held.job_id == job.id
        finisher = threading.Timer(0.5, broker.complete, args=(held, None))
        finisher.start()
        asked = time.monotonic()
        waited = pooled.wait(job.id, 30)
        finisher.join()
    assert waited.state == "succeeded"
    assert time.monotonic() - asked < 15


# --- prepared statements ----------------------------------------------------------------


def _alternate(url: str, threshold: int | None, runs: int = 8) -> list[str]:
    """Run one broker statement `runs` times on one pooled client connection while a second
    client pins a server connection in a transaction every other time, so consecutive runs
    land on different server connections (as under load). Returns the errors seen."""
    errors: list[str] = []
    with (
        psycopg.connect(url, autocommit=True, prepare_threshold=threshold) as conn,
        psycopg.connect(url, autocommit=True) as other,
    ):
        executor.configure(conn)
        for i in range(runs):
            try:
                if i % 2:
                    with other.transaction():
                        other.execute("SELECT 1")
                        executor.run(conn, lease.get_jobs([1]))
                else:
                    executor.run(conn, lease.get_jobs([1]))
            except DatabaseUnavailable as exc:
                errors.append(str(exc))
    return errors


def test_prepared_statements_fail_through_pgbouncer_118(bouncer: Bouncer) -> None:
    # psycopg's default (the broker's without BROKER_LISTEN_URL): prepared after 5 runs on
    # one server connection, then used on another one, which never saw it.
    errors = _alternate(bouncer.url, Settings().prepare_threshold)
    assert errors, "expected pgbouncer 1.18 to lose the prepared statement"
    # Each error names the fix.
    assert all(e.endswith(POOLER_HINT) and "prepared statement" in e for e in errors), errors
    # BROKER_PREPARE_THRESHOLD=none, the default once BROKER_LISTEN_URL is set.
    assert _alternate(bouncer.url, None) == []


# --- without BROKER_LISTEN_URL -----------------------------------------------------------


def test_worker_without_the_listen_url_warns_once_and_polls(
    bouncer: Bouncer, broker: Broker, tmp_path: Path
) -> None:
    with WorkerProcess(
        bouncer.url, tmp_path, ["--poll-interval", "0.5"], BROKER_PREPARE_THRESHOLD="none"
    ) as worker:
        wait_for(
            lambda: NO_NOTIFICATIONS in worker.output(),
            30,
            "the worker to notice that notifications do not reach it",
            diagnose=worker.output,
        )
        n = 50
        broker.enqueue_many([JobSpec("noop") for _ in range(n)])
        wait_for(
            lambda: states(bouncer.direct).get("succeeded") == n,
            60,
            f"{n} jobs to succeed by polling",
            diagnose=lambda: f"{states(bouncer.direct)}\n{worker.output()}",
        )
        assert worker.stop() == 0
    [line] = [line for line in worker.output().splitlines() if NO_NOTIFICATIONS in line]
    assert "set BROKER_LISTEN_URL to a direct URL" in line


@pytest.mark.parametrize("listen", [False, True])
def test_waits_probe_their_listen_connection(
    bouncer: Bouncer, listen: bool, caplog: pytest.LogCaptureFixture
) -> None:
    async def wait_for_nothing() -> Job:
        client = await AsyncBroker.connect(
            bouncer.url, prepare_threshold=None, listen_url=bouncer.direct if listen else None
        )
        client.wait_sweep = 0.5
        try:
            job = await client.enqueue("noop")
            # Nothing runs the job: the wait lasts past the probe's deadline.
            return await client.wait(job.id, PROBE_TIMEOUT + 1.5)
        finally:
            await client.close()

    with caplog.at_level(logging.WARNING, logger="broker"):
        waited = asyncio.run(wait_for_nothing())
    assert waited.state == "queued"
    warned = [r.getMessage() for r in caplog.records if NO_NOTIFICATIONS in r.getMessage()]
    if listen:
        assert warned == []
    else:
        assert len(warned) == 1
        assert "waits see a job end by checking every 0.5 s" in warned[0]


def test_bad_prepare_threshold_is_one_line_and_exit_2() -> None:
    env = {
        **os.environ,
        "BROKER_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/unused",
        "BROKER_PREPARE_THRESHOLD": "often",
    }
    env.pop("BROKER_TEST_DATABASE_URL", None)
    for cmd in (
        [sys.executable, "-m", "broker.cli", "stats"],
        [sys.executable, "-m", "broker.worker", "--tasks", "tasks_fixture"],
    ):
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests" / "acceptance"), str(ROOT)])
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert done.returncode == 2, (cmd, done.stdout, done.stderr)
        assert done.stderr.strip().splitlines() == [
            "error: BROKER_PREPARE_THRESHOLD must be `none` or an integer of at least 0,"
            " got 'often'"
        ], done.stderr


def test_a_missing_pgbouncer_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules[__name__], "_pgbouncer_binary", lambda: None)
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        require_pgbouncer()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="set CI=1"):
        require_pgbouncer()
