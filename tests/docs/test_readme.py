"""The README's Python and SQL examples run as written against a real database."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg

README = Path(__file__).resolve().parents[2] / "README.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_python_examples_run(db_url: str) -> None:
    found = blocks("python")
    assert found, "README has no python examples"
    namespace: dict[str, object] = {"database_url": db_url}
    for code in found:
        exec(compile(code, str(README), "exec"), namespace)
    with psycopg.connect(db_url) as conn:
        kinds = dict(conn.execute("SELECT kind, count(*) FROM broker.jobs GROUP BY kind"))
    assert kinds == {"send_email": 2, "resize": 1000, "ship_order": 1}


def test_sql_examples_run(db_url: str) -> None:
    found = blocks("sql")
    assert found, "README has no SQL examples"
    with psycopg.connect(db_url, autocommit=True) as conn:
        for code in found:
            conn.execute(code.encode())
        state = conn.execute("SELECT state FROM broker.jobs WHERE id = 1").fetchone()
    assert state == ("cancelled",)
