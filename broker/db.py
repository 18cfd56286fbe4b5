"""Where the database is: BROKER_DATABASE_URL, or an embedded PostgreSQL under BROKER_HOME."""

from __future__ import annotations

import os
from pathlib import Path

from broker.config import Settings
from broker.errors import ConfigError

EMBEDDED_HINT = (
    "no BROKER_DATABASE_URL set and the embedded PostgreSQL is not installed: "
    "run `pip install 'pg-broker[embedded]'` or set BROKER_DATABASE_URL=postgresql://..."
)


def sqlalchemy_url(url: str) -> str:
    """Return `url` with the psycopg 3 driver named, as SQLAlchemy expects."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    raise ConfigError(f"not a PostgreSQL URL: {url!r}")


def embedded_data_dir(home: Path) -> Path:
    """The embedded server's data directory under `home`, created with its parents.

    Also points XDG_RUNTIME_DIR (when unset) at a private 0700 directory beside it:
    pgserver's platformdirs warns at import time without one (as in containers).
    """
    data = (home / "pgdata").resolve()
    runtime = data.parent / "run"
    runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime))
    return data


def start_embedded(home: Path) -> str:
    """Start (or reuse) the embedded PostgreSQL kept under `home`/pgdata; return its URL.

    The server stops when the last process using it exits (a one-shot `broker stats`
    leaves nothing running; one started by `broker dev` stays up for it); the data stays
    under `home` for the next command. Raises ConfigError when pgserver is missing.
    """
    data = embedded_data_dir(home)
    try:
        import pgserver
    except ImportError:
        raise ConfigError(EMBEDDED_HINT) from None
    server = pgserver.get_server(data, cleanup_mode="stop")  # type: ignore[attr-defined]
    return str(server.get_uri())


def database_url(settings: Settings) -> str:
    """The URL to use: the configured one, else the embedded server's (started on demand)."""
    if settings.database_url:
        return settings.database_url
    return start_embedded(settings.home)
