"""Host clock skew cannot change a job's fate: only the database's now() decides.

The Python process is made to believe it is a day ahead or a day behind (time.time,
time.time_ns and datetime.datetime, globally and in every broker module), and the same
scheduled-claim-expire-reap scenario must play out identically. Separately, no statement
a worker sends carries a timestamp: workers send durations only.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Self

import psycopg
import pytest

from broker import Broker, lease
from broker._copy import COPY_MIN_BATCH
from broker.lease import Failure, JobSpec, Lease, Statement
from tests.dbtime import advance_db_time

Conn = psycopg.Connection[tuple[Any, ...]]

DAY = 86400.0
# Wall time a step may take on a loaded 2-core machine; "not yet" checks leave this room.
SLACK = 10.0
_real_time = time.time
_real_time_ns = time.time_ns
_RealDatetime = dt.datetime


def _skewed_datetime(offset: float) -> type[dt.datetime]:
    class SkewedDatetime(_RealDatetime):
        """datetime whose idea of "now" is `offset` seconds off the real clock."""

        @classmethod
        def now(cls, tz: dt.tzinfo | None = None) -> Self:
            return cls.fromtimestamp(_real_time() + offset, tz)

        @classmethod
        def utcnow(cls) -> Self:
            return cls.fromtimestamp(_real_time() + offset, dt.UTC).replace(tzinfo=None)

        @classmethod
        def today(cls) -> Self:
            return cls.fromtimestamp(_real_time() + offset)

    return SkewedDatetime


@pytest.fixture
def skew_host_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[float], None]]:
    """Call with an offset in seconds to make this process's clock that far off."""

    def skew(offset: float) -> None:
        skewed = _skewed_datetime(offset)
        monkeypatch.setattr(time, "time", lambda: _real_time() + offset)
        monkeypatch.setattr(time, "time_ns", lambda: _real_time_ns() + int(offset * 1e9))
        monkeypatch.setattr(dt, "datetime", skewed)
        # Modules that did `from datetime import datetime` hold their own reference.
        for name, module in list(sys.modules.items()):
            if (name == "broker" or name.startswith("broker.")) and getattr(
                module, "datetime", None
            ) is _RealDatetime:
                monkeypatch.setattr(module, "datetime", skewed)

    yield skew


def _scenario(broker: Broker, conn: Conn) -> list[tuple[str, Any]]:
    """Scheduled job, claimed once due, lease expires, reaper requeues; what each step saw."""
    seen: list[tuple[str, Any]] = []
    job_id = broker.enqueue("skew", {"x": 1}, delay=30).id
    due_in = conn.execute(
        "SELECT extract(epoch FROM run_at - now()) FROM broker.jobs WHERE id = %s", (job_id,)
    ).fetchone()
    assert due_in is not None
    seen.append(("due in ~30 s", 30 - SLACK < float(due_in[0]) <= 30))
    seen.append(("claim before due", broker.claim(["default"], 10, "skew:1", lease_ttl=30)))
    advance_db_time(conn, 31)
    claimed = broker.claim(["default"], 10, "skew:1", lease_ttl=30)
    seen.append(("claim when due", [(c.job_id == job_id, c.epoch) for c in claimed]))
    seen.append(("reap while leased", broker.reap()))
    advance_db_time(conn, 20)
    seen.append(("heartbeat", [h.epoch for h in broker.heartbeat(claimed, 30).extended]))
    # 40 s after the claim: past the first lease, within the extended one.
    advance_db_time(conn, 20)
    seen.append(("reap within extended lease", broker.reap()))
    advance_db_time(conn, 11)
    seen.append(("reap after expiry", [(r.job_id == job_id, r.state) for r in broker.reap()]))
    job = broker.get_job(job_id)
    seen.append(("after reap", (job.state, job.attempts, job.last_error)))
    return seen


EXPECTED = [
    ("due in ~30 s", True),
    ("claim before due", []),
    ("claim when due", [(True, 1)]),
    ("reap while leased", []),
    ("heartbeat", [1]),
    ("reap within extended lease", []),
    ("reap after expiry", [(True, "queued")]),
    ("after reap", ("queued", 1, "lease expired")),
]


@pytest.mark.parametrize("offset", [DAY, -DAY, 0.0], ids=["plus-1-day", "minus-1-day", "true"])
def test_claims_and_reaper_ignore_the_host_clock(
    broker: Broker, conn: Conn, skew_host_clock: Callable[[float], None], offset: float
) -> None:
    db_now = broker.db_clock()
    skew_host_clock(offset)
    # The fake clock is really in force, in the stdlib and in broker's own modules.
    assert abs(time.time() - db_now.timestamp() - offset) < 600
    assert abs(time.time_ns() / 1e9 - db_now.timestamp() - offset) < 600
    assert abs(dt.datetime.now(dt.UTC).timestamp() - db_now.timestamp() - offset) < 600
    skewed_now = lease.datetime.now(dt.UTC)  # type: ignore[attr-defined]
    assert abs(skewed_now.timestamp() - db_now.timestamp() - offset) < 600

    assert _scenario(broker, conn) == EXPECTED


@pytest.mark.parametrize("offset", [DAY, -DAY], ids=["plus-1-day", "minus-1-day"])
def test_bulk_enqueue_schedules_by_the_database_clock(
    broker: Broker, conn: Conn, skew_host_clock: Callable[[float], None], offset: float
) -> None:
    # Big key-less batches take the COPY path, which computes run_at in Python: from the
    # database's now() read in the same transaction, never from the host clock.
    skew_host_clock(offset)
    ids = [
        e.id for e in broker.enqueue_many(JobSpec("bulk", delay=30) for _ in range(COPY_MIN_BATCH))
    ]
    due = conn.execute(
        "SELECT min(extract(epoch FROM run_at - now())), max(extract(epoch FROM run_at - now()))"
        " FROM broker.jobs WHERE id = ANY(%s)",
        (ids,),
    ).fetchone()
    assert due is not None
    assert 10 < float(due[0]) <= float(due[1]) <= 30
    assert broker.claim(["default"], COPY_MIN_BATCH, "skew:1") == []
    advance_db_time(conn, 31)
    assert len(broker.claim(["default"], COPY_MIN_BATCH, "skew:1")) == COPY_MIN_BATCH


def _values(value: Any) -> Iterator[Any]:
    if isinstance(value, Mapping):
        for item in value.values():
            yield from _values(item)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            yield from _values(item)
    else:
        yield value


def test_worker_statements_carry_durations_never_timestamps() -> None:
    held = Lease(7, 3, "default", "k", {"a": 1}, 0, 1, 5, 30.0, "w:1")
    other = Lease(8, 1, "default", "k", {}, 0, 2, 5, None, "w:1")
    statements: list[Statement[Any]] = [
        lease.claim(["default", "emails"], 10, "w:1", 15.0),
        lease.heartbeat([held, other], 15.0),
        lease.finish(
            [lease.completed(held, {"done": True}), lease.completed(other)], "broker_jobs"
        ),
        lease.finish(
            [lease.failed(held, Failure("boom")), lease.failed(other, Failure("bad", False, 2.5))],
            "broker_jobs",
        ),
        lease.finish([lease.cancel_acked(held, "cancelled")], "broker_jobs"),
        lease.finish([lease.released(held), lease.released(other)], "broker_jobs"),
        lease.append_logs([(held, "line")]),
        lease.reap(),
    ]
    for stmt in statements:
        values = list(_values(stmt.params))
        assert values, stmt.query
        clock_values = [v for v in values if isinstance(v, dt.date | dt.time)]
        assert clock_values == [], stmt.query
    claim = statements[0]
    assert claim.params["ttl"] == 15.0
    assert statements[1].params["ttl"] == 15.0
    assert statements[3].params["delays"] == [None, 2.5]


def test_advance_db_time_shifts_every_stored_time(broker: Broker, conn: Conn) -> None:
    job_id = broker.enqueue("t", delay=100).id
    before = conn.execute(
        "SELECT run_at, created_at FROM broker.jobs WHERE id = %s", (job_id,)
    ).fetchone()
    event_before = conn.execute(
        "SELECT at FROM broker.job_events WHERE job_id = %s", (job_id,)
    ).fetchone()
    advance_db_time(conn, 40.5)
    after = conn.execute(
        "SELECT run_at, created_at FROM broker.jobs WHERE id = %s", (job_id,)
    ).fetchone()
    event_after = conn.execute(
        "SELECT at FROM broker.job_events WHERE job_id = %s", (job_id,)
    ).fetchone()
    assert before is not None and after is not None
    assert event_before is not None and event_after is not None
    shift = dt.timedelta(seconds=40.5)
    assert (after[0], after[1], event_after[0]) == (
        before[0] - shift,
        before[1] - shift,
        event_before[0] - shift,
    )
    with pytest.raises(ValueError):
        advance_db_time(conn, -1)
