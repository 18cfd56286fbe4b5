"""What a new user meets on the command line (issue 14): a database that is missing or not
migrated, a mistyped BROKER_* variable, one duration syntax, `prune` that asks first, and
`--json` errors. Each runs the real `broker` command in a subprocess."""

from __future__ import annotations

import asyncio
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
