"""What a new user meets on the command line (issue 14): a database that is missing or not
migrated, a mistyped BROKER_* variable, one duration syntax, `prune` that asks first, and
`--json` errors. Each runs the real `broker` command in a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from worker_harness import ROOT

from broker import AsyncBroker, Broker, DatabaseUnavailable
from tests.conftest import with_dbname


def run(
    *args: str, url: str | None, input: str | None = None, cwd: Path | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """`broker ARGS` with no BROKER_* variable but BROKER_DATABASE_URL=url and `env`."""
    # As a fresh shell: no BROKER_* and no XDG_RUNTIME_DIR (the suite's embedded server
    # sets one for itself).
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("BROKER_") and k != "XDG_RUNTIME_DIR"
    }
    clean["PYTHONPATH"] = str(ROOT)
    if url is not None:
        clean["BROKER_DATABASE_URL"] = url
    return subprocess.run(
        [sys.executable, "-m", "broker.cli", *args],
        env={**clean, **env},
        input=input,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


@pytest.fixture
def home() -> Iterator[Path]:
    """A BROKER_HOME outside pytest's temporary root: as root, pgserver runs PostgreSQL as
    the user `pgserver`, and a pytest session starting meanwhile makes that root 0700."""
    path = Path(tempfile.mkdtemp(prefix="broker-home-")) / "home"
    yield path
    shutil.rmtree(path.parent, ignore_errors=True)


def missing_database(db_url: str) -> str:
    """`db_url` aimed at a database that does not exist (the URL may name a Unix socket
    directory in its query, as the embedded server's does: only the path changes)."""
    return with_dbname(db_url, "pg_broker_no_such_db")


# --- item 5: database errors say their cause ---------------------------------------------


def test_a_missing_database_says_it_does_not_exist(db_url: str) -> None:
    result = run("stats", url=missing_database(db_url))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert 'database "pg_broker_no_such_db" does not exist' in result.stderr
    assert "within" not in result.stderr  # not the timeout's message


def test_the_client_reports_a_refusal_without_waiting_it_out(db_url: str) -> None:
    with pytest.raises(DatabaseUnavailable, match="does not exist"):
        Broker.connect(missing_database(db_url), connect_timeout=30)


def test_the_async_client_reports_a_refusal_too(db_url: str) -> None:
    with pytest.raises(DatabaseUnavailable, match="does not exist"):
        asyncio.run(AsyncBroker.connect(missing_database(db_url), connect_timeout=30))


def test_an_unmigrated_database_says_to_run_migrate(empty_db_url: str) -> None:
    for args in (["stats"], ["jobs", "ls"], ["enqueue", "k"]):
        result = run(*args, url=empty_db_url)
        assert result.returncode == 2, (args, result.stderr)
        [line] = result.stderr.splitlines()
        assert line.startswith("error: the database is not migrated (")
        assert line.endswith("run `broker migrate`")
    assert run("migrate", url=empty_db_url).returncode == 0
    assert run("stats", url=empty_db_url).returncode == 0


# --- item 2: a mistyped variable is flagged; a one-shot command leaves nothing running ---


def postmaster_running(home: Path) -> bool:
    """Whether the embedded server under `home` is up (its postmaster.pid names a live pid)."""
    pid_file = home / "pgdata" / "postmaster.pid"
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text().split()[0])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_mistyped_variable_is_named_and_the_embedded_server_does_not_outlive_it(
    db_url: str, tmp_path: Path, home: Path
) -> None:
    result = run("stats", url=None, cwd=tmp_path, BROKER_DATABSE_URL=db_url, BROKER_HOME=str(home))
    lines = result.stderr.splitlines()
    assert lines[0] == (
        "warning: BROKER_DATABSE_URL is not a pg-broker setting and is ignored;"
        " did you mean BROKER_DATABASE_URL?"
    )
    # What happens instead is said: the embedded server, under BROKER_HOME ...
    assert lines[1].startswith("note: BROKER_DATABASE_URL is not set: using the embedded")
    assert str(home / "pgdata") in lines[1]
    # ... which is not migrated, and says so (one line, exit 2).
    assert result.returncode == 2, result.stderr
    assert lines[2].startswith("error: the database is not migrated (")
    assert len(lines) == 3
    assert (home / "pgdata" / "PG_VERSION").exists()
    # The command started the server for itself and stopped it when it exited.
    assert not postmaster_running(home)

    # Migrated and used by the documented one-shot commands, it stays stopped between them.
    migrated = run("migrate", url=None, cwd=tmp_path, BROKER_HOME=str(home))
    assert migrated.returncode == 0, migrated.stderr
    stats = run("stats", "--json", url=None, cwd=tmp_path, BROKER_HOME=str(home))
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["totals"]["queued"] == 0
    assert not postmaster_running(home)


# --- item 7: one duration syntax, prune asks first, --json errors, identity, progress ---


def on_terminal(
    *args: str, url: str, answer: str = "", timeout: float = 60, **env: str
) -> tuple[int, str]:
    """`broker ARGS` with stdin, stdout and stderr on a pseudo-terminal (typing `answer`);
    its exit code and everything it wrote there."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    clean.update(PYTHONPATH=str(ROOT), BROKER_DATABASE_URL=url, **env)
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "broker.cli", *args],
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        env=clean,
        close_fds=True,
    )
    os.close(secondary)
    if answer:
        os.write(primary, answer.encode())
    output = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([primary], [], [], 0.5)
        if not ready:
            if proc.poll() is not None:
                break
            continue
        try:
            data = os.read(primary, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        output += data
    os.close(primary)
    return proc.wait(10), output.decode(errors="replace").replace("\r\n", "\n")


def test_delay_and_the_other_durations_take_units(db_url: str, broker: Broker) -> None:
    for text, seconds in (("10m", 600), ("1h30m", 5400), ("2.5s", 2.5), ("45", 45)):
        done = run("enqueue", "k", "--delay", text, "--timeout", "90s", "--json", url=db_url)
        assert done.returncode == 0, done.stderr
        job = broker.get_job(json.loads(done.stdout)["id"])
        assert (job.run_at - job.created_at).total_seconds() == pytest.approx(seconds)
        assert job.timeout is not None and job.timeout.total_seconds() == 90
    bad = run("enqueue", "k", "--delay", "10 minutes", url=db_url)
    assert bad.returncode == 2
    [line] = bad.stderr.splitlines()
    assert line.startswith("error: Invalid value for '--delay': a duration: seconds, or")
    schedule = run("schedules", "add", "tick", "--kind", "k", "--every", "5m", url=db_url)
    assert schedule.returncode == 0, schedule.stderr
    assert "every 300s" in run("schedules", "ls", url=db_url).stdout


def test_json_errors_are_one_json_object_on_stderr(db_url: str) -> None:
    missing = run("jobs", "show", "987654", "--json", url=db_url)
    assert (missing.returncode, missing.stdout) == (1, "")
    assert missing.stderr.count("\n") == 1
    assert json.loads(missing.stderr) == {"error": "job 987654 not found", "exit_code": 1}
    bad = run("enqueue", "k", "--json", "--delay", "soon", url=db_url)
    assert (bad.returncode, bad.stdout) == (2, "")
    body = json.loads(bad.stderr)
    assert body["exit_code"] == 2 and "--delay" in body["error"]
    # Without --json, the same error is the one `error:` line.
    plain = run("jobs", "show", "987654", url=db_url)
    assert plain.stderr == "error: job 987654 not found\n"


def finished_long_ago(db_url: str, broker: Broker, n: int) -> list[int]:
    ids = [broker.enqueue("k").id for _ in range(n)]
    for held in broker.claim(["default"], n, "host:1"):
        broker.complete(held)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE broker.jobs SET finished_at = now() - interval '2 days' WHERE id = ANY(%s)",
            (ids,),
        )
    return ids


def remaining(db_url: str) -> int:
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM broker.jobs").fetchone()
    assert row is not None
    return int(row[0])


def test_prune_dry_run_counts_and_deletes_nothing(db_url: str, broker: Broker) -> None:
    finished_long_ago(db_url, broker, 3)
    dry = run("prune", "--dry-run", "--older-than", "1d", url=db_url)
    assert (dry.returncode, dry.stdout) == (0, "would prune 3 succeeded, 0 cancelled, 0 failed\n")
    counted = run("prune", "--dry-run", "--state", "succeeded", "--json", url=db_url)
    assert json.loads(counted.stdout) == {"succeeded": 3}
    assert remaining(db_url) == 3
    # Not on a terminal (cron, a script), prune deletes without asking, as before.
    done = run("prune", "--older-than", "36h", url=db_url)
    assert done.stdout == "pruned 3 succeeded, 0 cancelled, 0 failed\n"
    assert remaining(db_url) == 0


def test_prune_on_a_terminal_asks_first(db_url: str, broker: Broker) -> None:
    finished_long_ago(db_url, broker, 2)
    code, shown = on_terminal("prune", url=db_url, answer="n\n")
    assert code == 1, shown
    assert "delete 2 succeeded, 0 cancelled, 0 failed (with their events and logs)? [y/N]" in shown
    assert "error: not confirmed; nothing was pruned" in shown
    assert remaining(db_url) == 2
    code, shown = on_terminal("prune", url=db_url, answer="y\n")
    assert (code, remaining(db_url)) == (0, 0), shown
    assert "pruned 2 succeeded" in shown
    finished_long_ago(db_url, broker, 1)
    code, shown = on_terminal("prune", "--yes", url=db_url)
    assert (code, remaining(db_url)) == (0, 0), shown
    assert "[y/N]" not in shown


def test_enqueue_file_progress_shows_rate_and_eta(db_url: str, tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(f'{{"kind": "k", "args": {{"n": {n}}}}}\n' for n in range(3000)))
    code, shown = on_terminal("enqueue", "--file", str(jobs), "--batch-size", "500", url=db_url)
    assert code == 0, shown
    assert re.search(r"enqueued 3,000 jobs \(100%\), [\d,]+ jobs/s", shown), shown
    assert "ETA " in shown  # shown while batches were still to come
    assert shown.rstrip().endswith("enqueued 3,000 jobs from " + str(jobs) + " in 6 batch(es)")


def test_workers_started_in_two_directories_share_the_users_host_id(
    db_url: str, tmp_path: Path
) -> None:
    state_home = tmp_path / "xdg-state"
    procs = []
    for seq in (1, 2):
        cwd = tmp_path / f"project{seq}"
        cwd.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
        env.update(
            PYTHONPATH=str(ROOT),
            BROKER_DATABASE_URL=db_url,
            XDG_STATE_HOME=str(state_home),
        )
        args = ["--tasks", "broker.examples.tasks", "--seq", str(seq), "--log-level", "WARNING"]
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "broker.worker", *args],
                cwd=cwd,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        )
    try:
        deadline = time.monotonic() + 30
        rows: list[tuple[str, str]] = []
        while time.monotonic() < deadline and len(rows) < 2:
            with psycopg.connect(db_url, autocommit=True) as conn:
                found = conn.execute("SELECT worker_id, host_id::text FROM broker.workers")
                rows = [(str(w), str(h)) for w, h in found.fetchall()]
            time.sleep(0.2)
        assert len(rows) == 2, rows
        assert len({host for _, host in rows}) == 1, rows
        assert (state_home / "pg-broker" / "host_id").read_text().strip() == rows[0][1]
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        outputs = [proc.communicate(timeout=30)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    for seq in (1, 2):
        assert not (tmp_path / f"project{seq}" / ".broker").exists()


def test_help_names_durations(db_url: str) -> None:
    for args in (["enqueue"], ["prune"], ["schedules", "add"]):
        shown = run(*args, "--help", url=db_url)
        assert shown.returncode == 0, shown.stderr
        assert "DURATION" in shown.stdout
    worker = subprocess.run(
        [sys.executable, "-m", "broker.worker", "--help"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert worker.returncode == 0, worker.stderr
    assert "--shutdown-grace DURATION" in worker.stdout
