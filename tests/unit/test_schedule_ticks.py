"""Tick math and the schedule contract, without a database: cron in a time zone (across
both DST changes), periods, downtime with backfill limits, keys, and validation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from broker import schedules as sch
from broker.errors import InvalidJobError
from broker.schedules import ScheduleSpec, format_tick, tick_key, timing
from broker.task import declared_schedules, registered, task

PARIS = ZoneInfo("Europe/Paris")


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def ticks_after(t: sch.Timing, start: datetime, n: int) -> list[datetime]:
    found = []
    for _ in range(n):
        start = t.next_after(start)
        found.append(start)
    return found


def test_cron_in_utc_ticks_on_its_minutes() -> None:
    t = timing("*/5 * * * *", None)
    assert t.next_after(utc(2026, 12, 1, 19, 17, 3)) == utc(2026, 12, 1, 19, 20)
    # Strictly after: an instant on a tick gives the next one.
    assert t.next_after(utc(2026, 12, 1, 19, 20)) == utc(2026, 12, 1, 19, 25)


def test_cron_in_a_zone_reads_the_fields_in_local_time() -> None:
    t = timing("0 9 * * *", None, "Europe/Paris")
    # 09:00 in Paris is 08:00 UTC in winter.
    assert t.next_after(utc(2026, 12, 1, 12, 0)) == utc(2026, 12, 2, 8, 0)


def test_cron_across_spring_forward_runs_the_skipped_time_once_after_the_change() -> None:
    # 2026-03-29: Paris clocks jump from 02:00 to 03:00; 02:30 does not exist that day.
    t = timing("30 2 * * *", None, "Europe/Paris")
    got = ticks_after(t, utc(2026, 3, 27, 12, 0), 3)
    assert got == [
        utc(2026, 3, 28, 1, 30),  # 02:30 CET
        utc(2026, 3, 29, 1, 0),  # 03:00 CEST, right after the change (as Debian's cron)
        utc(2026, 3, 30, 0, 30),  # 02:30 CEST
    ]


def test_cron_across_fall_back_runs_an_ambiguous_time_once_but_hourly_ticks_twice() -> None:
    # 2026-10-25: Paris clocks go back from 03:00 CEST to 02:00 CET.
    daily = timing("30 2 * * *", None, "Europe/Paris")
    assert ticks_after(daily, utc(2026, 10, 24, 12, 0), 2) == [
        utc(2026, 10, 25, 0, 30),  # 02:30 CEST, the first of the two
        utc(2026, 10, 26, 1, 30),  # 02:30 CET the next day
    ]
    half_hourly = timing("*/30 * * * *", None, "Europe/Paris")
    got = ticks_after(half_hourly, utc(2026, 10, 24, 23, 59), 6)
    assert got == [utc(2026, 10, 25, 0, 0) + timedelta(minutes=30 * k) for k in range(6)]


def test_due_ticks_backwards_match_forward_iteration_across_dst() -> None:
    t = timing("*/30 * * * *", None, "Europe/Paris")
    since, now = utc(2026, 10, 24, 22, 0), utc(2026, 10, 25, 3, 10)
    forward = [tick for tick in ticks_after(t, since - timedelta(seconds=1), 40) if tick <= now]
    assert t.due(since, now, 1000) == forward
    assert t.due(since, now, 3) == forward[-3:]


def test_every_ticks_on_multiples_of_the_period_since_the_epoch() -> None:
    t = timing(None, 30)
    assert t.next_after(utc(2026, 12, 1, 19, 20, 0)) == utc(2026, 12, 1, 19, 20, 30)
    assert t.next_after(utc(2026, 12, 1, 19, 20, 29, 999999)) == utc(2026, 12, 1, 19, 20, 30)
    sub = timing(None, 1.5)
    assert sub.next_after(utc(2026, 1, 1)) == utc(2026, 1, 1, 0, 0, 1, 500000)


@pytest.mark.parametrize(("limit", "expected"), [(1, 1), (3, 3), (1000, 10)])
def test_downtime_gives_the_latest_missed_ticks_up_to_the_backfill(
    limit: int, expected: int
) -> None:
    t = timing(None, 10)
    since = utc(2026, 12, 1, 0, 0, 0)
    now = utc(2026, 12, 1, 0, 1, 35)  # ticks :00, :10 ... 01:30 are due: ten
    got = t.due(since, now, limit)
    assert len(got) == expected
    assert got[-1] == utc(2026, 12, 1, 0, 1, 30)
    assert got == sorted(got)


def test_a_long_downtime_costs_only_the_backfill() -> None:
    cron = timing("* * * * *", None)
    got = cron.due(utc(2020, 1, 1), utc(2026, 12, 1, 12, 0, 30), 2)
    assert got == [utc(2026, 12, 1, 11, 59), utc(2026, 12, 1, 12, 0)]
    assert timing(None, 1).due(utc(2020, 1, 1), utc(2026, 1, 1), 1) == [utc(2026, 1, 1)]


def test_nothing_is_due_before_since_or_without_a_limit() -> None:
    t = timing(None, 10)
    assert t.due(utc(2026, 1, 1, 0, 0, 5), utc(2026, 1, 1, 0, 0, 9), 5) == []
    assert t.due(utc(2026, 1, 1), utc(2026, 1, 2), 0) == []


def test_tick_keys_are_utc_iso_8601() -> None:
    assert tick_key("nightly", utc(2026, 12, 1, 19, 20)) == "schedule:nightly:2026-12-01T19:20:00Z"
    local = datetime(2026, 12, 1, 20, 20, tzinfo=PARIS)
    assert format_tick(local) == "2026-12-01T19:20:00Z"
    assert format_tick(utc(2026, 1, 1, 0, 0, 1, 500000)) == "2026-01-01T00:00:01.5Z"


@pytest.mark.parametrize(
    ("cron", "every", "tz", "message"),
    [
        ("* * * *", None, None, "5 fields"),
        ("* * * * * *", None, None, "5 fields"),
        ("61 * * * *", None, None, "invalid cron"),
        ("0 0 31 2 *", None, None, "invalid cron"),
        (None, 0.5, None, "every must be between 1"),
        (None, float("nan"), None, "every must be a number"),
        (None, None, None, "exactly one"),
        ("* * * * *", 5, None, "exactly one"),
        ("* * * * *", None, "Mars/Olympus", "time zone"),
    ],
)
def test_bad_timing_is_refused(
    cron: str | None, every: float | None, tz: str | None, message: str
) -> None:
    with pytest.raises(InvalidJobError, match=message):
        timing(cron, every, tz)


def test_the_schedule_contract_holds_its_job_to_the_job_contract() -> None:
    with pytest.raises(InvalidJobError, match="schedule name"):
        sch.check(ScheduleSpec("a b", "k", every=5))
    with pytest.raises(InvalidJobError, match="kind"):
        sch.check(ScheduleSpec("a", "k k", every=5))
    with pytest.raises(InvalidJobError, match="backfill"):
        sch.check(ScheduleSpec("a", "k", every=5, backfill=0))
    assert sch.check(ScheduleSpec("a", "k", cron="0  9 * * 1-5")).cron == "0 9 * * 1-5"


def test_the_longest_name_still_makes_valid_keys() -> None:
    name = "n" * sch.NAME_MAX_LENGTH
    key = tick_key(name, utc(2026, 1, 1, 0, 0, 0, 123456))
    assert len(key) <= 200


def test_task_decorator_declares_a_schedule_named_after_the_kind() -> None:
    @task("tests.unit.periodic", every=30, args={"x": 1}, backfill=2, queue="q")
    def periodic(x: int) -> None: ...

    spec = registered()["tests.unit.periodic"].schedule
    assert spec is not None and spec in declared_schedules()
    assert (spec.name, spec.kind, spec.every, spec.args, spec.queue, spec.backfill) == (
        "tests.unit.periodic",
        "tests.unit.periodic",
        30,
        {"x": 1},
        "q",
        2,
    )


def test_task_decorator_refuses_a_bad_schedule() -> None:
    with pytest.raises(InvalidJobError, match="every must be between 1"):
        task("tests.unit.too_fast", every=0.5)(lambda: None)
    with pytest.raises(InvalidJobError, match="invalid cron"):
        task("tests.unit.bad_cron", cron="99 * * * *")(lambda: None)
    with pytest.raises(InvalidJobError, match="args= is for periodic"):
        task("tests.unit.args_only", args={"a": 1})(lambda: None)
    assert "tests.unit.too_fast" not in registered()
