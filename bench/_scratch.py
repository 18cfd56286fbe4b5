"""A scratch database for benchmark runs: created and migrated next to a server URL,
emptied and settled between runs, dropped afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from broker.migrate import upgrade


def with_dbname(url: str, dbname: str) -> str:
    """`url` aimed at another database on the same server."""
    return urlunsplit(urlsplit(url)._replace(path="/" + dbname))


@contextmanager
def scratch_database(dsn: str, name: str, schema: str) -> Iterator[str]:
    """Create and migrate database `name` next to `dsn`; drop it on exit. Yields its URL."""
    drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(drop)
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = with_dbname(dsn, name)
    try:
        upgrade(url, schema)
        yield url
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(drop)


def reset(url: str, schema: str) -> None:
    """Empty the broker tables so every run starts from the same state."""
    tables = sql.SQL(", ").join(
        sql.Identifier(schema, t) for t in ("jobs", "job_events", "job_logs")
    )
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("TRUNCATE {} RESTART IDENTITY").format(tables))


def settle(url: str, schema: str) -> None:
    """VACUUM ANALYZE + CHECKPOINT before a timed run, as the reference does."""
    with psycopg.connect(url, autocommit=True) as conn:
        for table in ("jobs", "job_events"):
            conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(schema, table)))
        conn.execute("CHECKPOINT")
