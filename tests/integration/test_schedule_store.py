"""Periodic jobs against a real database: the SQL functions, the upsert rules of declared
schedules, and the scheduler pass (ticks, keys, downtime, backfill, orphans, races)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from broker import Broker, InvalidJobError
from broker import schedules as sch
from broker._executor import drive
from broker.errors import ScheduleNotFound, translate
from broker.schedules import ScheduleSpec, run_pass
from tests.dbtime import advance_db_time

Conn = psycopg.Connection[tuple[Any, ...]]
KIND = "report"


def alive(conn: Conn, *kinds: str, worker_id: str = "host:1") -> None:
    """A live worker row declaring `kinds` (as registry.register writes it)."""
    conn.execute(
        "INSERT INTO broker.workers (worker_id, host_id, seq, hostname, pid, meta)"
        " VALUES (%s, gen_random_uuid(), 1, 'test', 1, %s::jsonb)"
        " ON CONFLICT (worker_id) DO UPDATE SET last_seen = now(), meta = excluded.meta",
        (worker_id, json.dumps({"kinds": list(kinds)})),
    )


def later(conn: Conn, seconds: float, *kinds: str) -> None:
    """Let `seconds` of database time pass; the worker declaring `kinds` stays alive."""
    advance_db_time(conn, seconds)
    alive(conn, *kinds)


def jobs(conn: Conn, kind: str = KIND) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT idempotency_key, args FROM broker.jobs WHERE kind = %s ORDER BY id", (kind,)
    ).fetchall()


def put(broker: Broker, spec: ScheduleSpec, declared_by: str | None = None) -> sch.Schedule:
    [row] = drive(sch.put_plan([spec], declared_by), broker.run)
    return row


def row(conn: Conn, name: str) -> dict[str, Any]:
    cur = conn.execute("SELECT * FROM broker.schedule_status WHERE name = %s", (name,))
    names = [c.name for c in cur.description or []]
    found = cur.fetchone()
    assert found is not None
    return dict(zip(names, found, strict=True))


def db_now(conn: Conn) -> Any:
    found = conn.execute("SELECT now()").fetchone()
    assert found is not None
    return found[0]


# --- SQL door -------------------------------------------------------------------------------


def test_sql_created_schedule_is_computed_by_the_next_pass_then_fires_once_per_tick(
    conn: Conn,
) -> None:
    alive(conn, KIND)
    conn.execute(
        "SELECT broker.create_schedule('nightly', 'report', every => interval '10 seconds',"
        " args => '{\"x\": 1}')"
    )
    assert row(conn, "nightly")["next_run_at"] is None
    first = run_pass(conn, 100, "broker")
    assert (first.claimed, first.enqueued) == (1, 0)  # computes the first tick, enqueues none
    nxt = row(conn, "nightly")["next_run_at"]
    assert nxt > db_now(conn) - timedelta(seconds=1)
    assert run_pass(conn, 100, "broker").claimed == 0  # not due yet
    later(conn, 10, KIND)
    tick = nxt - timedelta(seconds=10)  # the stored tick, as advance_db_time shifted it
    assert run_pass(conn, 100, "broker").enqueued == 1
    assert jobs(conn) == [(sch.tick_key("nightly", tick), {"x": 1})]
    assert run_pass(conn, 100, "broker").claimed == 0
    after = row(conn, "nightly")
    assert after["last_tick"] == tick and after["last_job_id"] is not None
    assert after["last_run_at"] is not None and after["next_run_at"] > db_now(conn)


def test_sql_door_refuses_bad_definitions_with_broker_sqlstates(conn: Conn) -> None:
    def create(args: str) -> None:
        sql_call(conn, f"SELECT * FROM broker.create_schedule({args})")

    with pytest.raises(InvalidJobError, match="5 fields"):
        create("'a', 'k', cron => '* * * *'")
    with pytest.raises(InvalidJobError, match="every must be between 1"):
        create("'a', 'k', every => interval '0.5 seconds'")
    with pytest.raises(InvalidJobError, match="exactly one of cron or every"):
        create("'a', 'k'")
    with pytest.raises(InvalidJobError, match="time zone"):
        create("'a', 'k', cron => '* * * * *', timezone => 'Mars/Olympus'")
    with pytest.raises(InvalidJobError, match="schedule name"):
        create("'a b', 'k', every => interval '5 s'")
    with pytest.raises(InvalidJobError, match="backfill"):
        create("'a', 'k', every => interval '5 s', backfill => 0")
    for fn in ("pause_schedule", "resume_schedule", "trigger_schedule", "delete_schedule"):
        with pytest.raises(ScheduleNotFound, match="'ghost' not found"):
            sql_call(conn, f"SELECT broker.{fn}('ghost')")


def test_unparseable_cron_from_sql_is_marked_not_crashing_and_a_fix_clears_it(
    conn: Conn, broker: Broker
) -> None:
    alive(conn, KIND)
    conn.execute("SELECT broker.create_schedule('bad', 'report', cron => '61 * * * *')")
    conn.execute("SELECT broker.create_schedule('good', 'report', every => interval '5 s')")
    done = run_pass(conn, 100, "broker")
    assert set(done.broken) == {"bad"} and "minute" in done.broken["bad"].lower()
    assert row(conn, "bad")["error"] and row(conn, "good")["error"] is None
    assert run_pass(conn, 100, "broker").claimed == 0  # a broken schedule is left alone
    fixed = put(broker, ScheduleSpec("bad", KIND, cron="1 * * * *"))
    assert fixed.error is None and fixed.next_run_at is not None


def test_trigger_enqueues_now_with_its_own_key_even_when_paused(conn: Conn, broker: Broker) -> None:
    put(broker, ScheduleSpec("t", KIND, every=3600, args={"n": 2}))
    broker.run(sch.pause("t"))
    job_id = broker.run(sch.trigger("t"))
    again = broker.run(sch.trigger("t"))
    assert job_id != again
    keys = [k for k, _ in jobs(conn)]
    assert all(k.startswith("schedule:t:manual:") for k in keys) and len(set(keys)) == 2
    state = row(conn, "t")
    assert state["last_job_id"] == again and state["last_run_at"] is not None
    assert state["paused"]


# --- the upsert rules -----------------------------------------------------------------------


def test_redeclaring_keeps_paused_and_next_run_and_the_next_tick_uses_new_args(
    conn: Conn, broker: Broker
) -> None:
    alive(conn, KIND)
    first = put(broker, ScheduleSpec(KIND, KIND, every=60, args={"v": 1}), "w:1")
    assert first.declared_by == "w:1" and first.next_run_at is not None
    broker.run(sch.pause(KIND))
    again = put(broker, ScheduleSpec(KIND, KIND, every=60, args={"v": 2}), "w:2")
    assert again.paused and again.next_run_at == first.next_run_at
    assert again.args == {"v": 2} and again.declared_by == "w:2"
    resumed = broker.run(sch.resume(KIND))
    assert not resumed.paused and resumed.next_run_at == first.next_run_at
    later(conn, 60, KIND)
    assert run_pass(conn, 100, "broker").enqueued == 1
    assert [args for _, args in jobs(conn)] == [{"v": 2}]


def test_changing_the_timing_recomputes_next_run_from_now(conn: Conn, broker: Broker) -> None:
    first = put(broker, ScheduleSpec("h", KIND, cron="0 0 1 1 *"))  # once a year
    changed = put(broker, ScheduleSpec("h", KIND, every=5))
    assert first.next_run_at is not None and changed.next_run_at is not None
    assert changed.next_run_at < first.next_run_at
    assert changed.next_run_at - db_now(conn) <= timedelta(seconds=5)
    zoned = put(broker, ScheduleSpec("h", KIND, every=5, timezone="Europe/Paris"))
    assert zoned.next_run_at != changed.next_run_at or zoned.timezone == "Europe/Paris"


def test_resume_skips_ticks_missed_while_paused(conn: Conn, broker: Broker) -> None:
    alive(conn, KIND)
    put(broker, ScheduleSpec("p", KIND, every=10))
    broker.run(sch.pause("p"))
    later(conn, 100, KIND)
    assert run_pass(conn, 100, "broker").claimed == 0
    assert broker.run(sch.resume("p")).next_run_at is None
    assert run_pass(conn, 100, "broker").enqueued == 0
    assert jobs(conn) == []


def test_delete_removes_the_schedule_not_its_jobs(conn: Conn, broker: Broker) -> None:
    put(broker, ScheduleSpec("d", KIND, every=10))
    broker.run(sch.trigger("d"))
    assert broker.run(sch.delete("d")) is True
    assert broker.run(sch.get("d")) is None and len(jobs(conn)) == 1


# --- downtime, backfill, orphans, races -----------------------------------------------------


@pytest.mark.parametrize(("backfill", "expected"), [(1, 1), (3, 3), (50, 10)])
def test_after_downtime_only_the_latest_missed_ticks_are_enqueued(
    conn: Conn, broker: Broker, backfill: int, expected: int
) -> None:
    alive(conn, KIND)
    # An hourly period, so the test's own run time cannot carry now() across the next
    # tick (with every=10 it did, one run in a few hundred, and an eleventh tick was due).
    start = put(broker, ScheduleSpec("b", KIND, every=3600, backfill=backfill)).next_run_at
    assert start is not None
    # A whole number of periods, so the shifted ticks stay on the period's grid: the
    # stored next tick moves to start - 10 h, and now() is within an hour before start,
    # so the ten ticks start - 10 h ... start - 1 h are due.
    later(conn, 36000, KIND)
    assert run_pass(conn, 100, "broker").enqueued == expected
    ticks = [start - timedelta(hours=10 - k) for k in range(10)][-expected:]
    assert [k for k, _ in jobs(conn)] == [sch.tick_key("b", t) for t in ticks]
    assert row(conn, "b")["next_run_at"] > db_now(conn)


def test_an_orphaned_schedule_is_flagged_and_its_ticks_skipped(conn: Conn, broker: Broker) -> None:
    alive(conn, "other")
    put(broker, ScheduleSpec("o", KIND, every=10))
    later(conn, 10, "other")
    done = run_pass(conn, 100, "broker")
    assert done.skipped == ["o"] and done.enqueued == 0 and jobs(conn) == []
    assert row(conn, "o")["orphaned"] is True
    alive(conn, "other", KIND)
    assert row(conn, "o")["orphaned"] is False
    later(conn, 10, "other", KIND)
    assert run_pass(conn, 100, "broker").enqueued == 1


def test_a_pass_skips_schedules_another_pass_holds_and_the_key_refuses_a_repeat(
    db_url: str, conn: Conn, broker: Broker
) -> None:
    alive(conn, KIND)
    put(broker, ScheduleSpec("r", KIND, every=10))
    later(conn, 10, KIND)
    with psycopg.connect(db_url) as other:
        other.execute("SELECT name FROM broker.schedules FOR UPDATE")  # another pass, mid-way
        assert run_pass(conn, 100, "broker").claimed == 0
        other.rollback()
    assert run_pass(conn, 100, "broker").enqueued == 1
    # Even if the row went back (a restored backup), the tick's key admits no second job.
    conn.execute(
        "UPDATE broker.schedules SET next_run_at = last_tick, last_tick = NULL WHERE name = 'r'"
    )
    again = run_pass(conn, 100, "broker")
    assert again.claimed == 1 and again.enqueued == 0
    assert len(jobs(conn)) == 1


def test_listing_shows_last_and_next_run(conn: Conn, broker: Broker) -> None:
    alive(conn, KIND)
    put(broker, ScheduleSpec("l2", KIND, cron="*/5 * * * *", timezone="Europe/Paris"))
    put(broker, ScheduleSpec("l1", KIND, every=30))
    listed = broker.run(sch.listing())
    assert [s.name for s in listed] == ["l1", "l2"]
    assert all(s.next_run_at is not None and s.last_run_at is None for s in listed)
    assert listed[1].cron == "*/5 * * * *" and listed[1].timezone == "Europe/Paris"


def sql_call(conn: Conn, query: str) -> None:
    """Run `query` as an operator would, with errors translated as every client does."""
    try:
        conn.execute(query)
    except psycopg.Error as exc:
        raise (translate(exc) or exc) from exc
