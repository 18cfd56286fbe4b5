"""Field limits on every enqueue path: an out-of-range value is InvalidJobError on the
enqueue_many() function and the COPY path alike, SQL broker.enqueue refuses times it could
not read back, and run_at takes any UTC offset Python allows (PostgreSQL stops at +-15:59)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest

from broker import Broker, InvalidJobError, JobSpec
from broker._copy import COPY_MIN_BATCH

Conn = psycopg.Connection[tuple[Any, ...]]
BIG = COPY_MIN_BATCH


@pytest.mark.parametrize("size", [1, BIG])
@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("priority", 2**31, "priority must be between"),
        ("priority", -(2**31) - 1, "priority must be between"),
        ("priority", 1.5, "priority must be an integer"),
        ("max_attempts", 2**32 + 3, "max_attempts must be between"),
        ("tags", [1], "tags must be a list of strings"),
        ("delay", 1e12, "at most 100 years"),
        ("timeout", float("inf"), "finite number of seconds"),
    ],
)
def test_out_of_range_values_are_rejected_on_both_paths(
    broker: Broker, conn: Conn, size: int, field: str, value: Any, message: str
) -> None:
    bad = JobSpec("k", **{field: value})
    with pytest.raises(InvalidJobError, match=message):
        broker.enqueue_many([bad] * size)
    assert conn.execute("SELECT count(*) FROM broker.jobs").fetchone() == (0,)


def test_sql_enqueue_rejects_unreadable_times(conn: Conn) -> None:
    for call in (
        "SELECT broker.enqueue('k', run_at => 'infinity')",
        "SELECT broker.enqueue('k', delay => interval '1000 years')",
        "SELECT broker.enqueue('k', timeout => interval '1000 years')",
    ):
        with pytest.raises(psycopg.Error, match="must be"):
            conn.execute(call)


def test_run_at_with_any_utc_offset_is_accepted(broker: Broker) -> None:
    far = datetime(2030, 1, 1, tzinfo=timezone(timedelta(hours=23)))
    job = broker.enqueue("k", run_at=far)
    assert broker.get_job(job.id).run_at == far.astimezone(UTC)


@pytest.mark.parametrize(
    "meta",
    [
        {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
        {"a": {"b": {"c": "d"}, "e": ""}, "f": "g"},
        {'quote"': "back\\slash", "ctl": "\n\t\r\b\f\x01\x1f\x7f", "é": "🚀"},
        {"k": "x" * 8183},
    ],
)
def test_meta_size_is_what_postgresql_prints(conn: Conn, meta: dict[str, Any]) -> None:
    """broker.spec.check_meta measures meta as PostgreSQL does (_parse_specs and the
    five-doors table rely on it)."""
    import json

    from broker.spec import check_meta

    row = conn.execute("SELECT octet_length(%s::jsonb::text)", [json.dumps(meta)]).fetchone()
    assert row == (check_meta(meta),)
