"""The Alembic migrations: the migrated schema equals broker.schema's Core definitions, the
migrations run down and up again, in any schema, and through both command lines."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, create_engine, pool

from broker import Broker
from broker.db import sqlalchemy_url
from broker.migrate import current_revision, downgrade, head_revision, upgrade
from broker.schema import build_metadata
from tests.waiters import wait_on

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
FUNCTIONS = (
    "enqueue",
    "enqueue_many",
    "cancel_job",
    "retry_job",
    "retry_backoff",
    "fold_job_counts",
    "recount_jobs",
    "finish_state",
)
SUBPROCESS_TIMEOUT = 120


@pytest.fixture
def engine(empty_db_url: str) -> Iterator[Engine]:
    eng = create_engine(sqlalchemy_url(empty_db_url), poolclass=pool.NullPool)
    yield eng
    eng.dispose()


def drift(engine: Engine, schema: str) -> list[Any]:
    """Differences between the database's `schema` and the Core metadata for it."""

    def include_name(name: str | None, type_: str, parent_names: object) -> bool:
        if type_ == "schema":
            return name == schema
        if type_ == "table":
            return name != "alembic_version"
        return True

    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection,
            opts={
                "include_schemas": True,
                "include_name": include_name,
                "compare_type": True,
                "compare_server_default": True,
            },
        )
        return list(compare_metadata(context, build_metadata(schema)))


def functions_in(url: str, schema: str) -> set[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname = %s",
            (schema,),
        ).fetchall()
    return {str(r[0]) for r in rows}


def relations_in(url: str, schema: str) -> set[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relkind IN ('r', 'v')",
            (schema,),
        ).fetchall()
    return {str(r[0]) for r in rows}


def test_migrated_schema_matches_core_metadata(empty_db_url: str, engine: Engine) -> None:
    upgrade(empty_db_url)
    assert current_revision(empty_db_url) == head_revision()
    assert drift(engine, "broker") == []


def diff_kinds(diffs: list[Any]) -> set[tuple[str, str]]:
    """(operation, object name) for each difference; column changes come wrapped in lists."""
    kinds: set[tuple[str, str]] = set()
    for diff in diffs:
        op = diff[0] if isinstance(diff, list) else diff
        if op[0] in ("modify_type", "modify_default", "modify_nullable"):
            kinds.add((op[0], op[3]))
        elif op[0] in ("add_column", "remove_column"):
            kinds.add((op[0], op[3].name))
        else:
            kinds.add((op[0], op[1].name))
    return kinds


def test_drift_is_detected(empty_db_url: str, engine: Engine) -> None:
    # Shows the comparison above can fail: hand-made changes to the schema are reported.
    upgrade(empty_db_url)
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE broker.jobs ADD COLUMN stray integer")
        conn.execute("DROP INDEX broker.jobs_lease_idx")
        conn.execute("ALTER TABLE broker.jobs ALTER COLUMN priority DROP DEFAULT")
        conn.execute("ALTER TABLE broker.job_logs ALTER COLUMN line TYPE varchar(10)")
    assert diff_kinds(drift(engine, "broker")) == {
        ("remove_column", "stray"),
        ("add_index", "jobs_lease_idx"),
        ("modify_default", "priority"),
        ("modify_type", "line"),
    }


def test_downgrade_to_base_then_upgrade(empty_db_url: str, engine: Engine) -> None:
    upgrade(empty_db_url)
    downgrade(empty_db_url)
    assert current_revision(empty_db_url) is None
    assert relations_in(empty_db_url, "broker") <= {"alembic_version"}
    assert not set(FUNCTIONS) & functions_in(empty_db_url, "broker")

    upgrade(empty_db_url)
    assert current_revision(empty_db_url) == head_revision()
    assert set(FUNCTIONS) <= functions_in(empty_db_url, "broker")
    assert {"jobs", "job_events", "job_logs", "workers", "queue_stats"} <= relations_in(
        empty_db_url, "broker"
    )
    assert drift(engine, "broker") == []
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        row = conn.execute("SELECT broker.enqueue('after_roundtrip')").fetchone()
        assert row is not None and row[0] >= 1


def test_non_default_schema(empty_db_url: str, engine: Engine) -> None:
    upgrade(empty_db_url, "jobsq")
    assert current_revision(empty_db_url, "jobsq") == head_revision()
    assert relations_in(empty_db_url, "broker") == set()
    assert set(FUNCTIONS) <= functions_in(empty_db_url, "jobsq")
    assert drift(engine, "jobsq") == []

    with psycopg.connect(empty_db_url, autocommit=True) as listener:
        listener.execute("LISTEN jobsq_jobs")
        wait_on(listener, "default", schema="jobsq")
        with Broker.connect(empty_db_url, schema="jobsq", max_size=2) as client:
            job = client.enqueue("in_jobsq", {"n": 1})
            [held] = client.claim(["default"], 5, "w:1", 5.0)
            assert (held.job_id, held.epoch, held.args) == (job.id, 1, {"n": 1})
            client.complete(held, "ok")
            assert client.get_job(job.id).state == "succeeded"
            assert [e.event for e in client.events(job.id)] == [
                "enqueued",
                "claimed",
                "succeeded",
            ]
        notes = list(listener.notifies(timeout=5, stop_after=1))
        assert [(n.channel, n.payload) for n in notes] == [("jobsq_jobs", "default")]

    downgrade(empty_db_url, "jobsq")
    assert not set(FUNCTIONS) & functions_in(empty_db_url, "jobsq")


def _env(url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env.update(BROKER_DATABASE_URL=url, **extra)
    return env


def test_alembic_cli_upgrade_head(empty_db_url: str, engine: Engine) -> None:
    done = subprocess.run(
        [str(BIN / "alembic"), "upgrade", "head"],
        cwd=ROOT,
        env=_env(empty_db_url),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    assert current_revision(empty_db_url) == head_revision()
    assert drift(engine, "broker") == []

    current = subprocess.run(
        [str(BIN / "alembic"), "current"],
        cwd=ROOT,
        env=_env(empty_db_url),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert current.returncode == 0, current.stderr
    assert head_revision() in current.stdout


def test_alembic_cli_without_url_explains(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    done = subprocess.run(
        [str(BIN / "alembic"), "upgrade", "head"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert done.returncode != 0
    assert "BROKER_DATABASE_URL" in done.stdout + done.stderr


def test_broker_migrate_console_script(empty_db_url: str) -> None:
    done = subprocess.run(
        [str(BIN / "broker"), "migrate"],
        cwd=ROOT,
        env=_env(empty_db_url),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    assert "migrated schema broker to head" in done.stdout
    assert current_revision(empty_db_url) == head_revision()

    again = subprocess.run(
        [str(BIN / "broker"), "migrate"],
        cwd=ROOT,
        env=_env(empty_db_url),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert again.returncode == 0, again.stderr


def test_broker_migrate_honours_broker_schema(empty_db_url: str) -> None:
    done = subprocess.run(
        [str(BIN / "broker"), "migrate"],
        cwd=ROOT,
        env=_env(empty_db_url, BROKER_SCHEMA="jobsq"),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    assert current_revision(empty_db_url, "jobsq") == head_revision()
    assert current_revision(empty_db_url, "broker") is None


def test_broker_migrate_bad_schema_is_one_line_error(empty_db_url: str) -> None:
    done = subprocess.run(
        [str(BIN / "broker"), "migrate"],
        cwd=ROOT,
        env=_env(empty_db_url, BROKER_SCHEMA="Bad-Schema"),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert done.returncode != 0
    assert "BROKER_SCHEMA" in done.stderr


def _parse_specs_source(url: str) -> str:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pg_get_functiondef('broker._parse_specs(jsonb)'::regprocedure)"
        ).fetchone()
    assert row is not None
    return str(row[0])


def test_contract_migration_downgrade_restores_the_old_function(empty_db_url: str) -> None:
    upgrade(empty_db_url, revision="0005")
    before = _parse_specs_source(empty_db_url)
    upgrade(empty_db_url)
    assert _parse_specs_source(empty_db_url) != before
    downgrade(empty_db_url, revision="0005")
    assert _parse_specs_source(empty_db_url) == before
