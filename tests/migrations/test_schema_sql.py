"""broker/sql/schema.sql is the current schema: a database built from it (tables from
broker/schema.py, then the file) equals one migrated from empty, object by object."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine, pool

from broker.db import sqlalchemy_url
from broker.migrate import schema_sql, upgrade
from broker.schema import build_metadata

# Every object of the schema with its definition as PostgreSQL prints it back.
CATALOG = {
    "function": """
        SELECT p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')',
               pg_get_functiondef(p.oid)
        FROM pg_proc p WHERE p.pronamespace = %(ns)s::regnamespace""",
    "view": """
        SELECT c.relname, pg_get_viewdef(c.oid) FROM pg_class c
        WHERE c.relnamespace = %(ns)s::regnamespace AND c.relkind = 'v'""",
    "trigger": """
        SELECT t.tgname, pg_get_triggerdef(t.oid) FROM pg_trigger t
        JOIN pg_class c ON c.oid = t.tgrelid
        WHERE c.relnamespace = %(ns)s::regnamespace AND NOT t.tgisinternal""",
    "index": """
        SELECT c.relname, pg_get_indexdef(c.oid) FROM pg_class c
        WHERE c.relnamespace = %(ns)s::regnamespace AND c.relkind = 'i'
          AND c.relname <> 'alembic_version_pkc'""",
    "constraint": """
        SELECT r.conrelid::regclass || '.' || r.conname, pg_get_constraintdef(r.oid)
        FROM pg_constraint r WHERE r.connamespace = %(ns)s::regnamespace
          AND r.conrelid::regclass::text NOT LIKE '%%alembic_version'""",
    "column": """
        SELECT table_name || '.' || column_name,
               concat_ws(' ', data_type, is_nullable, column_default, is_identity)
        FROM information_schema.columns
        WHERE table_schema = %(ns)s AND table_name <> 'alembic_version'""",
}


def catalog(url: str, schema: str) -> dict[str, dict[str, Any]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return {
            kind: dict(conn.execute(query, {"ns": schema}).fetchall())
            for kind, query in CATALOG.items()
        }


def build_from_schema_sql(url: str, schema: str) -> None:
    engine = create_engine(sqlalchemy_url(url), poolclass=pool.NullPool)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    build_metadata(schema).create_all(engine)
    engine.dispose()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(schema_sql(schema))  # type: ignore[arg-type]


@pytest.mark.parametrize("schema", ["broker", "jobsq"])
def test_schema_sql_equals_the_migrated_schema(db_url: str, empty_db_url: str, schema: str) -> None:
    # db_url comes migrated (schema broker); the other database starts empty.
    if schema == "broker":
        migrated, built = db_url, empty_db_url
    else:
        migrated, built = empty_db_url, db_url
        upgrade(migrated, schema)
    build_from_schema_sql(built, schema)
    got, want = catalog(built, schema), catalog(migrated, schema)
    for kind in CATALOG:
        assert got[kind].keys() == want[kind].keys(), kind
        for name in want[kind]:
            assert got[kind][name] == want[kind][name], f"{kind} {name} differs"
    # Guards the catalog queries: comparing two empty sets would prove nothing.
    assert len(want["function"]) >= 14 and len(want["view"]) >= 3 and len(want["trigger"]) >= 4


def test_the_comparison_sees_a_changed_function(empty_db_url: str, db_url: str) -> None:
    build_from_schema_sql(empty_db_url, "broker")
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        conn.execute(
            "CREATE OR REPLACE FUNCTION broker.finish_state(outcome text, retryable boolean,"
            " cancel_requested boolean, attempts integer, max_attempts integer)"
            " RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT 'queued' $$"
        )
    got, want = catalog(empty_db_url, "broker"), catalog(db_url, "broker")
    changed = [n for n in want["function"] if got["function"][n] != want["function"][n]]
    assert changed == [
        "finish_state(outcome text, retryable boolean, cancel_requested boolean,"
        " attempts integer, max_attempts integer)"
    ]
