"""Alembic environment: reads the URL from BROKER_DATABASE_URL and keeps its version table
in the broker schema."""

from __future__ import annotations

from sqlalchemy import create_engine, pool, text

from alembic import context
from broker.config import Settings, validate_schema
from broker.db import sqlalchemy_url
from broker.schema import build_metadata

config = context.config
x_args = context.get_x_argument(as_dictionary=True)
settings = Settings.from_env()
url = x_args.get("url") or config.attributes.get("url") or settings.database_url
if not url:
    raise SystemExit("set BROKER_DATABASE_URL (or pass -x url=...) to run migrations")
schema = validate_schema(x_args.get("schema") or config.attributes.get("schema") or settings.schema)
target_metadata = build_metadata(schema)


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    # Only compare objects of the broker schema, never the rest of the database.
    if type_ == "schema":
        return name == schema
    return True


def run_migrations_offline() -> None:
    context.configure(
        url=sqlalchemy_url(url),
        target_metadata=target_metadata,
        literal_binds=True,
        version_table_schema=schema,
        include_schemas=True,
        include_name=include_name,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(sqlalchemy_url(url), poolclass=pool.NullPool)
    with engine.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        connection.commit()
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            version_table_schema=schema,
            include_schemas=True,
            include_name=include_name,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
