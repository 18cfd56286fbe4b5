"""Run the Alembic migrations programmatically (`broker migrate`, tests, `broker dev`)."""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config

from alembic import command
from broker.config import DEFAULT_SCHEMA, validate_schema
from broker.errors import ConfigError

_PACKAGE = Path(__file__).resolve().parent
_ROOT = _PACKAGE.parent


def script_location() -> Path:
    """The migrations: the repository's alembic/ (source checkouts, editable installs), or
    the copy a wheel installs as broker/_alembic (see pyproject.toml)."""
    for candidate in (_ROOT / "alembic", _PACKAGE / "_alembic"):
        if (candidate / "env.py").exists():
            return candidate
    raise ConfigError(f"no migrations found next to the broker package ({_PACKAGE})")


def alembic_config(url: str, schema: str = DEFAULT_SCHEMA) -> Config:
    """An Alembic Config for the shipped migrations, aimed at `url`/`schema`.

    Uses the repository's alembic.ini when there is one (for its logging settings);
    a wheel install needs none.
    """
    ini = _ROOT / "alembic.ini"
    cfg = Config(str(ini)) if ini.exists() else Config()
    cfg.set_main_option("script_location", str(script_location()))
    cfg.attributes["url"] = url
    cfg.attributes["schema"] = validate_schema(schema)
    return cfg


def upgrade(url: str, schema: str = DEFAULT_SCHEMA, revision: str = "head") -> None:
    """Migrate the database at `url` to `revision` (default: the newest)."""
    command.upgrade(alembic_config(url, schema), revision)


def downgrade(url: str, schema: str = DEFAULT_SCHEMA, revision: str = "base") -> None:
    """Migrate the database at `url` down to `revision` (default: nothing left)."""
    command.downgrade(alembic_config(url, schema), revision)


def current_revision(url: str, schema: str = DEFAULT_SCHEMA) -> str | None:
    """The revision the database is at, or None when it was never migrated."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL", (f"{schema}.alembic_version",)
        ).fetchone()
        if not row or not row[0]:
            return None
        rev = conn.execute(
            sql.SQL("SELECT version_num FROM {}.alembic_version").format(sql.Identifier(schema))
        ).fetchone()
        return str(rev[0]) if rev else None


def head_revision() -> str:
    """The newest revision shipped with this code."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config("postgresql://unused")).get_current_head()
    assert head is not None
    return head


def schema_sql(schema: str = DEFAULT_SCHEMA) -> str:
    """broker/sql/schema.sql for `schema`: the current functions, views and triggers."""
    from importlib import resources

    from broker._queries import SCHEMA_FILE

    text = resources.files("broker.sql").joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    s = validate_schema(schema)
    return text.format(
        s=s, jobs_channel=f"{s}_jobs", cancel_channel=f"{s}_cancel", done_channel=f"{s}_done"
    )
