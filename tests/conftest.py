"""Test databases: BROKER_TEST_DATABASE_URL when set, else an embedded server (pgserver).

A template database is migrated once per session; every test gets its own database
cloned from it (CREATE DATABASE ... TEMPLATE), so tests never see each other's rows and
several pytest runs can share one server.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from broker import Broker
from broker.migrate import upgrade

_counter = itertools.count()


def with_dbname(url: str, dbname: str) -> str:
    """`url` aimed at another database on the same server."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


def _admin(url: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(url, autocommit=True)


def create_database(server_url: str, name: str, template: str | None = None) -> str:
    with _admin(server_url) as conn:
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            query = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        conn.execute(query)
    return with_dbname(server_url, name)


def drop_database(server_url: str, name: str) -> None:
    with _admin(server_url) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """URL of a maintenance database on the test server."""
    env = os.environ.get("BROKER_TEST_DATABASE_URL")
    if env:
        yield env
        return
    # Not under pytest's basetemp: a concurrent pytest session rotates old basetemp
    # directories away, which would delete this session's running server.
    base = Path(tempfile.mkdtemp(prefix="broker-test-pg-"))
    data = base / "pgdata"
    # pgserver's platformdirs warns at import time unless this is a private (0700) directory.
    os.environ.setdefault("XDG_RUNTIME_DIR", str(base))
    try:
        import pgserver  # type: ignore[import-untyped]
    except ImportError:
        pytest.exit(
            "no BROKER_TEST_DATABASE_URL and pgserver is not installed: pip install -e '.[dev]'",
            returncode=2,
        )
    server = pgserver.get_server(data, cleanup_mode="stop")
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def template_db(pg_server_url: str) -> Iterator[str]:
    """Name of a migrated template database, private to this pytest session."""
    name = f"brk_tpl_{os.getpid()}"
    drop_database(pg_server_url, name)
    url = create_database(pg_server_url, name)
    upgrade(url)
    yield name
    drop_database(pg_server_url, name)


@pytest.fixture
def db_url(pg_server_url: str, template_db: str) -> Iterator[str]:
    """URL of a fresh, migrated database for one test."""
    name = f"brk_{os.getpid()}_{next(_counter)}"
    url = create_database(pg_server_url, name, template=template_db)
    yield url
    drop_database(pg_server_url, name)


@pytest.fixture
def empty_db_url(pg_server_url: str) -> Iterator[str]:
    """URL of a fresh database with nothing migrated."""
    name = f"brk_{os.getpid()}_{next(_counter)}_empty"
    url = create_database(pg_server_url, name)
    yield url
    drop_database(pg_server_url, name)


@pytest.fixture
def broker(db_url: str) -> Iterator[Broker]:
    """A sync client on the test's database."""
    with Broker.connect(db_url, max_size=8) as client:
        yield client


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A raw autocommit connection to the test's database, for assertions."""
    with psycopg.connect(db_url, autocommit=True) as c:
        yield c
