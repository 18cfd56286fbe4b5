"""Test databases, made by pytest-postgresql on BROKER_TEST_DATABASE_URL's server, else on
an embedded server (pgserver) started once per session.

- `pg_template` comes from pytest-postgresql's `postgresql_noproc` factory: once per session
  it creates a template database and runs its `load` step, the migrations, into it.
- `db_url` gives each test its own copy of that template and `empty_db_url` a database with
  nothing in it; a pytest-postgresql `DatabaseJanitor` creates each one and drops it after.

Every name starts with `_SESSION` (the pid and a random token, as pids repeat across
containers), so several pytest sessions can share one server at once.

Where pytest-postgresql does not fit as is:
- `postgresql_noproc` takes host and port when the factory is called, at import, and the
  embedded server's socket is only known once it runs. So the factory reads them from the
  session fixture `pg_server` (its `depends_on`), whose template is None: the session's
  template is created empty, not layered on another one.
- Its `postgresql` client fixture is not used. It holds one open, non-autocommit
  connection through the test and gives every test the same database name; tests here
  want a URL (for pools, worker subprocesses, the API server), some want two databases.
- Its janitors and loaders connect with host, port, user and password alone; other URL
  parameters (sslmode, options) do not reach them (libpq's PG* variables still do). The
  URLs handed to tests keep every parameter of the server URL.
"""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from pytest_postgresql.executors import NoopExecutor
from pytest_postgresql.factories import postgresql_noproc
from pytest_postgresql.janitor import DatabaseJanitor

from broker import Broker
from broker.migrate import upgrade

_SESSION = f"brk_{os.getpid()}_{secrets.token_hex(3)}"
_counter = itertools.count()


def with_dbname(url: str, dbname: str) -> str:
    """`url` aimed at another database on the same server."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


class _Server(NoopExecutor):
    """The test server as pytest-postgresql's factories and janitors see it: connection
    details, and no template of its own."""

    @property
    def template_dbname(self) -> str | None:  # type: ignore[override]
        return None


def server_at(url: str) -> _Server:
    """Connection details of the server behind `url`, as libpq resolves them; its database
    is the maintenance database that creates and drops the others."""
    with psycopg.connect(url, autocommit=True) as conn:
        info = conn.info
        return _Server(
            host=info.host,
            port=info.port,
            user=info.user,
            password=info.password or None,
            options=str(conninfo_to_dict(url).get("options", "")),
            dbname=info.dbname,
            maintenance_dbname=info.dbname,
        )


def janitor(server: NoopExecutor, name: str, template: str | None = None) -> DatabaseJanitor:
    """A janitor for database `name` on `server`: `init()` creates it (a copy of `template`
    when given), `drop()` ends its sessions and drops it if it exists."""
    return DatabaseJanitor(
        user=server.user,
        host=server.host,
        port=server.port,
        password=server.password,
        dbname=name,
        template_dbname=template,
        maintenance_dbname=server.maintenance_dbname,
    )


def create_database(server_url: str, name: str, template: str | None = None) -> str:
    """Create database `name` on `server_url`'s server (a copy of `template` when given);
    return its URL."""
    janitor(server_at(server_url), name, template).init()
    return with_dbname(server_url, name)


def drop_database(server_url: str, name: str) -> None:
    """Drop database `name` on `server_url`'s server, if it exists, ending its sessions."""
    janitor(server_at(server_url), name).drop()


def migrate_template(
    *, host: str, port: str | int, user: str, password: str | None, dbname: str, **_: object
) -> None:
    """pytest-postgresql `load` step: migrate the session's template to the newest revision.

    Loaders get connection details, not a URL; the host may be a socket directory, so it
    goes in the query string, where libpq and SQLAlchemy both read it.
    """
    auth = quote(user, safe="") + (":" + quote(password, safe="") if password else "")
    query = urlencode({"host": host, "port": port})
    upgrade(f"postgresql://{auth}@/{quote(dbname, safe='')}?{query}")


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
        from pgserver.postgres_server import get_server
    except ImportError:
        pytest.exit(
            "no BROKER_TEST_DATABASE_URL and pgserver is not installed: pip install -e '.[dev]'",
            returncode=2,
        )
    server = get_server(data, cleanup_mode="stop")
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server(pg_server_url: str) -> _Server:
    """The test server, for pytest-postgresql's noproc factory and the janitors."""
    return server_at(pg_server_url)


pg_template = postgresql_noproc(dbname=_SESSION, load=[migrate_template], depends_on="pg_server")
"""Session fixture: the migrated template `<_SESSION>_tmpl`, dropped when the session ends."""


@pytest.fixture(scope="session")
def template_db(pg_template: NoopExecutor) -> str:
    """Name of a migrated template database, private to this pytest session."""
    return pg_template.template_dbname


@pytest.fixture
def db_url(pg_server_url: str, pg_server: _Server, template_db: str) -> Iterator[str]:
    """URL of a fresh, migrated database for one test."""
    name = f"{_SESSION}_{next(_counter)}"
    with janitor(pg_server, name, template=template_db):
        yield with_dbname(pg_server_url, name)


@pytest.fixture
def empty_db_url(pg_server_url: str, pg_server: _Server) -> Iterator[str]:
    """URL of a fresh database with nothing migrated."""
    name = f"{_SESSION}_{next(_counter)}_empty"
    with janitor(pg_server, name):
        yield with_dbname(pg_server_url, name)


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
