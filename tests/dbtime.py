"""Simulated database clock for tests: `advance_db_time` makes now() seem `seconds` later.

PostgreSQL's clock cannot be moved, so this shifts every stored timestamp in the broker's
schema back by `seconds` instead (run_at, lease_expires_at, created_at, started_at,
finished_at, cancel_requested_at, event and log times, workers.last_seen, and any
timestamptz column a later migration adds). The production SQL only ever compares stored
timestamps with now() or adds durations to now(), so "every stored time is s earlier" and
"now() is s later" are observably the same to it: a lease that had 5 s left and is shifted
by 6 s is expired, exactly as if 6 s had passed. Absolute values read back (created_at,
run_at) are of course shifted too; compare them with the database's now(), not with a
value read before the shift.
"""

from __future__ import annotations

import math
from typing import Any

import psycopg
from psycopg import sql

from broker.config import DEFAULT_SCHEMA, validate_schema


def _timestamp_columns(conn: psycopg.Connection[Any], schema: str) -> dict[str, list[str]]:
    rows = conn.execute(
        "SELECT c.table_name, c.column_name FROM information_schema.columns c"
        " JOIN information_schema.tables t USING (table_schema, table_name)"
        " WHERE c.table_schema = %s AND t.table_type = 'BASE TABLE'"
        "   AND c.data_type IN ('timestamp with time zone', 'timestamp without time zone')"
        " ORDER BY c.table_name, c.ordinal_position",
        (schema,),
    ).fetchall()
    columns: dict[str, list[str]] = {}
    for table, column in rows:
        columns.setdefault(str(table), []).append(str(column))
    return columns


def advance_db_time(
    conn: psycopg.Connection[Any], seconds: float, *, schema: str = DEFAULT_SCHEMA
) -> None:
    """Make the broker's database behave as if `seconds` (>= 0) had passed, atomically.

    Works on an autocommit connection (one transaction) or inside the caller's open
    transaction (a savepoint). Raises ValueError for a negative or non-finite amount.
    """
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"the database clock only moves forward, got {seconds!r} s")
    if seconds == 0:
        return
    validate_schema(schema)
    with conn.transaction():
        for table, columns in _timestamp_columns(conn, schema).items():
            assignments = sql.SQL(", ").join(
                sql.SQL("{col} = {col} - make_interval(secs => %(s)s)").format(
                    col=sql.Identifier(col)
                )
                for col in columns
            )
            conn.execute(
                sql.SQL("UPDATE {table} SET {assignments}").format(
                    table=sql.Identifier(schema, table), assignments=assignments
                ),
                {"s": float(seconds)},
            )
