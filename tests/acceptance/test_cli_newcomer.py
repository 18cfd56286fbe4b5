"""What a new user meets on the command line (issue 14): a database that is missing or not
migrated, a mistyped BROKER_* variable, one duration syntax, `prune` that asks first, and
`--json` errors. Each runs the real `broker` command in a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from worker_harness import ROOT

from broker import AsyncBroker, Broker, DatabaseUnavailable


def run(
    *args: str, url: str | None, input: str | None = None, cwd: Path | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """`broker ARGS` with no BROKER_* variable but BROKER_DATABASE_URL=url and `env`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
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


def missing_database(db_url: str) -> str:
    return db_url.rsplit("/", 1)[0] + "/pg_broker_no_such_db"


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
    db_url: str, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    result = run(
        "stats", url=None, cwd=tmp_path, BROKER_DATABSE_URL=db_url, BROKER_HOME=str(home)
    )
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
