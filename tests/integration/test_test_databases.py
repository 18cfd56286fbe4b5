"""The test-database fixtures themselves: a second pytest session on the same server, run
while this one holds its template and a database, makes databases of its own, sees this
session's untouched, and drops all of its own when it ends."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import os
from pathlib import Path
from urllib.parse import urlsplit

import psycopg


def test_a_session_of_its_own(pg_server_url, template_db, db_url):
    theirs = os.environ["PARENT_DATABASES"].split(",")
    assert template_db not in theirs
    assert urlsplit(db_url).path[1:] not in theirs
    with psycopg.connect(pg_server_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_database WHERE datname = ANY(%s)", (theirs,)
        ).fetchone()
    assert row == (len(theirs),)
    Path(os.environ["CHILD_REPORT"]).write_text(template_db)
"""


def databases_of(url: str, template: str) -> list[str]:
    """The databases of the session whose template is `template`: every name it makes
    starts like its template's."""
    prefix = template.removesuffix("_tmpl") + "_"
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s) ORDER BY 1",
            (prefix,),
        ).fetchall()
    return [name for (name,) in rows]


def test_a_concurrent_session_keeps_to_its_own_databases(
    pg_server_url: str,
    template_db: str,
    db_url: str,
    conn: psycopg.Connection[tuple[Any, ...]],
    tmp_path: Path,
) -> None:
    ours = [template_db, urlsplit(db_url).path[1:]]
    child = tmp_path / "test_child.py"
    child.write_text(CHILD)
    report = tmp_path / "child_template"
    env = {
        **os.environ,
        "BROKER_TEST_DATABASE_URL": pg_server_url,
        "PARENT_DATABASES": ",".join(ours),
        "CHILD_REPORT": str(report),
    }
    # The child session loads this repository's conftest as a plugin, on the same server.
    plugins = ["-p", "no:cacheprovider", "-p", "tests.conftest"]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", *plugins, "-c", str(ROOT / "pyproject.toml"), child],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    theirs = report.read_text()
    assert theirs not in ours
    assert databases_of(pg_server_url, theirs) == []
    assert databases_of(pg_server_url, template_db) == sorted(ours)
    assert conn.execute("SELECT count(*) FROM broker.jobs").fetchone() == (0,)
