"""Periodic jobs: what a schedule is, when it ticks, and every statement on broker.schedules.

A schedule names a job (kind, args, queue, priority) and when to enqueue it: a five-field
cron expression read in a time zone (`cron`, `timezone`), or a period in seconds (`every`,
at least MIN_EVERY; ticks are the multiples of it since the Unix epoch, so every process
computes the same ones). PostgreSQL cannot evaluate cron, so ticks are computed here, in
Python, but always from a database `now()` the caller read in the same transaction, never
from this host's clock. Each tick's job carries the idempotency key
`schedule:<name>:<tick>` (`tick_key`), so two schedulers that raced would still enqueue it
once. The pure parts (validation, tick math, keys) need no database; the statements are
sans-I/O like broker.lease, and `scheduler_pass` is one scheduler pass written once as a
generator for the worker's async connection and the sync runner alike
([decision 012](../docs/decisions/012-periodic-jobs.md)).
"""

from __future__ import annotations

import math
import re
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
import psycopg
from cronsim import CronSim, CronSimError
from msgspec import Meta

from broker import lease
from broker import spec as contract
from broker.errors import InvalidJobError
from broker.lease import Row, Statement
from broker.spec import JobSpec
from broker.types import Enqueued

NAME_MAX_LENGTH = 128
NAME_RULE = f"schedule name must be 1-{NAME_MAX_LENGTH} characters of letters, digits, _ . : -"
CRON_FIELDS = 5
MIN_EVERY = 1.0
MAX_EVERY = float(contract.MAX_DURATION_SECONDS)
DEFAULT_TIMEZONE = "UTC"
# A worker back after downtime enqueues only the latest missed tick unless told otherwise.
DEFAULT_BACKFILL = 1
MAX_BACKFILL = 1000
KEY_PREFIX = "schedule"

_NAME = re.compile(r"[A-Za-z0-9_.:-]+")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


# --- validation and tick math ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Timing:
    """When a schedule ticks: a parsed cron expression in a zone, or a period (seconds).

    Build it with `timing()`, which validates; every method takes and returns aware UTC
    datetimes."""

    cron: str | None
    every: float | None
    timezone: str = DEFAULT_TIMEZONE
    _zone: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"), repr=False, compare=False)

    @property
    def _period_us(self) -> int:
        assert self.every is not None
        return max(1, round(self.every * 1_000_000))

    def next_after(self, instant: datetime) -> datetime:
        """The first tick strictly after `instant`."""
        if self.every is not None:
            step = self._period_us
            return _from_us((_to_us(instant) // step + 1) * step)
        assert self.cron is not None
        local = instant.astimezone(self._zone)
        try:
            return _utc(next(iter(CronSim(self.cron, local))))
        except (StopIteration, CronSimError, ValueError, OverflowError):
            raise InvalidJobError(f"cron expression {self.cron!r} never fires again") from None

    def due(self, since: datetime, now: datetime, limit: int) -> list[datetime]:
        """The latest `limit` ticks t with since <= t <= now, oldest first."""
        if limit < 1 or since > now:
            return []
        if self.every is not None:
            step = self._period_us
            last = _to_us(now) // step
            first = max(-(-_to_us(since) // step), last - limit + 1)
            return [_from_us(k * step) for k in range(first, last + 1)]
        assert self.cron is not None
        # Backwards from just after now, so a long downtime costs `limit` steps, not one
        # per missed tick; cronsim yields the same instants in both directions (DST too).
        found: list[datetime] = []
        start = (now + _MICROSECOND).astimezone(self._zone)
        for local in CronSim(self.cron, start, reverse=True):
            tick = _utc(local)
            if tick < since or len(found) == limit:
                break
            found.append(tick)
        return found[::-1]


def timing(cron: str | None, every: float | None, timezone: str | None = None) -> Timing:
    """Validated timing: exactly one of a five-field `cron` (read in `timezone`, an IANA
    name, default UTC) or `every` (seconds, MIN_EVERY..MAX_EVERY). Raises InvalidJobError."""
    tz = DEFAULT_TIMEZONE if timezone is None else timezone
    if (cron is None) == (every is None):
        raise InvalidJobError("a schedule needs exactly one of cron or every")
    if every is not None:
        if isinstance(every, bool) or not isinstance(every, int | float) or math.isnan(every):
            raise InvalidJobError("every must be a number of seconds")
        if not MIN_EVERY <= every <= MAX_EVERY:
            raise InvalidJobError(
                f"every must be between {MIN_EVERY:g} and {MAX_EVERY:.0f} seconds"
            )
        return Timing(None, float(every), DEFAULT_TIMEZONE if timezone is None else _zone_name(tz))
    assert cron is not None
    if not isinstance(cron, str) or len(cron.split()) != CRON_FIELDS:
        raise InvalidJobError(
            f"cron must have {CRON_FIELDS} fields (minute hour day-of-month month day-of-week)"
        )
    zone = _zone(tz)
    try:
        CronSim(cron, datetime.now(UTC).astimezone(zone))
    except Exception as exc:  # cronsim's CronSimError, or anything odd input trips
        raise InvalidJobError(f"invalid cron expression {cron!r}: {exc}") from None
    return Timing(" ".join(cron.split()), None, tz, zone)


def _zone_name(tz: str) -> str:
    _zone(tz)
    return tz


def _zone(tz: str) -> ZoneInfo:
    if not isinstance(tz, str) or not tz or len(tz) > 64:
        raise InvalidJobError(f"unknown time zone {tz!r}")
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidJobError(f"unknown time zone {tz!r} (use an IANA name)") from None


def format_tick(tick: datetime) -> str:
    """A tick as it appears in keys: UTC ISO-8601, `2026-12-01T19:20:00Z` (fractional
    seconds only for a period that is not whole seconds)."""
    utc = tick.astimezone(UTC)
    text = utc.strftime("%Y-%m-%dT%H:%M:%S")
    if utc.microsecond:
        text += f".{utc.microsecond:06d}".rstrip("0")
    return text + "Z"


def tick_key(name: str, tick: datetime) -> str:
    """The idempotency key of `name`'s job for `tick`: at most one job per tick."""
    return f"{KEY_PREFIX}:{name}:{format_tick(tick)}"


def _to_us(instant: datetime) -> int:
    return (instant - _EPOCH) // _MICROSECOND


def _from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _utc(instant: datetime) -> datetime:
    return instant.astimezone(UTC)


# --- what a schedule is ---------------------------------------------------------------------


ScheduleName = Annotated[
    str, Meta(min_length=1, max_length=NAME_MAX_LENGTH, pattern=contract.NAME_PATTERN)
]
Cron = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=200,
        description="Five fields: minute hour day-of-month month day-of-week (cron syntax).",
    ),
]
Every = Annotated[
    float,
    Meta(
        ge=MIN_EVERY, le=MAX_EVERY, description="Seconds between ticks (multiples since the epoch)."
    ),
]
TimeZone = Annotated[
    str,
    Meta(min_length=1, max_length=64, description="IANA time zone the cron fields are read in."),
]
Backfill = Annotated[
    int,
    Meta(ge=1, le=MAX_BACKFILL, description="How many missed ticks to enqueue after downtime."),
]


class ScheduleSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A schedule to create or replace: exactly one of cron or every. `paused` applies
    when it is created only; replacing a schedule never pauses or resumes it."""

    name: ScheduleName
    kind: contract.Kind
    cron: Cron | None = None
    every: Every | None = None
    timezone: TimeZone | None = None
    args: contract.Args = {}
    queue: contract.QueueName = contract.DEFAULT_QUEUE
    priority: contract.Priority = 0
    backfill: Backfill = DEFAULT_BACKFILL
    paused: bool = False


def check(spec: ScheduleSpec) -> Timing:
    """Hold `spec` to the schedule contract (and its job to the job contract); returns its
    timing. Raises InvalidJobError naming the field."""
    check_name(spec.name)
    found = timing(spec.cron, spec.every, spec.timezone)
    contract.check(JobSpec(spec.kind, spec.args, spec.queue, spec.priority))
    if isinstance(spec.backfill, bool) or not isinstance(spec.backfill, int):
        raise InvalidJobError("backfill must be an integer")
    if not 1 <= spec.backfill <= MAX_BACKFILL:
        raise InvalidJobError(f"backfill must be between 1 and {MAX_BACKFILL}")
    if not isinstance(spec.paused, bool):
        raise InvalidJobError("paused must be true or false")
    return found


def check_name(name: object) -> str:
    """`name` if it is a valid schedule name; raises InvalidJobError."""
    if not (isinstance(name, str) and len(name) <= NAME_MAX_LENGTH and _NAME.fullmatch(name)):
        raise InvalidJobError(NAME_RULE)
    return name


@dataclass(frozen=True, slots=True)
class Schedule:
    """A row of broker.schedule_status. `next_run_at` None: the next scheduler pass
    computes it (a schedule created or resumed from SQL); `orphaned`: no live worker
    declares its kind, so its ticks are skipped; `error`: why the scheduler cannot run it."""

    name: str
    kind: str
    args: dict[str, Any]
    queue: str
    priority: int
    cron: str | None
    every: float | None
    timezone: str
    backfill: int
    paused: bool
    next_run_at: datetime | None
    last_run_at: datetime | None
    last_tick: datetime | None
    last_job_id: int | None
    error: str | None
    declared_by: str | None
    declared_at: datetime | None
    created_at: datetime
    updated_at: datetime
    orphaned: bool


def _schedules(rows: list[Row]) -> list[Schedule]:
    return [Schedule(*r) for r in rows]


def _one(rows: list[Row]) -> Schedule:
    return Schedule(*rows[0])


# --- statements -----------------------------------------------------------------------------


def clock() -> Statement[datetime]:
    """The database's now(): the instant Python doors compute a new schedule's first tick
    from."""
    return Statement("schedule_clock", {}, lambda rows: _utc(rows[0][0]))


def put(
    spec: ScheduleSpec, next_run_at: datetime | None, declared_by: str | None = None
) -> Statement[Schedule]:
    """Create or replace a schedule (broker._put_schedule). A replacement keeps `paused`,
    and keeps `next_run_at` unless the timing (cron, every, timezone) changed."""
    found = check(spec)
    params = {
        "name": spec.name,
        "kind": spec.kind,
        "args": msgspec.json.encode(spec.args).decode(),
        "queue": spec.queue,
        "priority": spec.priority,
        "cron": found.cron,
        "every": found.every,
        "timezone": found.timezone,
        "backfill": spec.backfill,
        "paused": spec.paused,
        "next_run_at": next_run_at,
        "declared_by": declared_by,
    }
    return Statement("schedule_put", params, _one)


PutPlan = Generator[Statement[Any], Any, list[Schedule]]


def put_plan(specs: Sequence[ScheduleSpec], declared_by: str | None = None) -> PutPlan:
    """Create or replace schedules, each with its first tick computed from database now():
    reads the clock, then one put per spec. Raises InvalidJobError before any write."""
    timings = [check(spec) for spec in specs]
    now = yield clock()
    done = []
    for spec, found in zip(specs, timings, strict=True):
        done.append((yield put(spec, found.next_after(now), declared_by)))
    return done


def listing() -> Statement[list[Schedule]]:
    """Every schedule, by name, with whether it is orphaned."""
    return Statement("schedule_list", {}, _schedules)


def get(name: str) -> Statement[Schedule | None]:
    """One schedule, or None."""
    return Statement("schedule_get", {"name": name}, lambda rows: _one(rows) if rows else None)


def pause(name: str) -> Statement[Schedule]:
    """Stop enqueuing ticks. Raises ScheduleNotFound."""
    return Statement("schedule_pause", {"name": name}, _one)


def resume(name: str) -> Statement[Schedule]:
    """Enqueue ticks again from the next one after now (ticks missed while paused are not
    enqueued). Raises ScheduleNotFound."""
    return Statement("schedule_resume", {"name": name}, _one)


def trigger(name: str) -> Statement[int]:
    """Enqueue the schedule's job now, outside its timing (key
    `schedule:<name>:manual:<uuid>`), paused or not; returns the job id. Raises
    ScheduleNotFound."""
    return Statement("schedule_trigger", {"name": name}, lambda rows: int(rows[0][0]))


def delete(name: str) -> Statement[bool]:
    """Remove a schedule (its jobs stay). A code-declared one comes back when a worker that
    declares it starts. Raises ScheduleNotFound."""
    return Statement("schedule_delete", {"name": name}, lambda rows: bool(rows[0][0]))


def seconds_until_due() -> Statement[float | None]:
    """Seconds (database time) until the next unpaused schedule is due; <= 0 when one is due
    now or waits for its first tick to be computed; None when there is none."""
    return Statement(
        "schedule_next_due",
        {},
        lambda rows: None if rows[0][0] is None else float(rows[0][0]),
    )


# --- one scheduler pass ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Due:
    """A due schedule as the pass claimed it (row locked until the pass commits)."""

    name: str
    kind: str
    args: dict[str, Any]
    queue: str
    priority: int
    cron: str | None
    every: float | None
    timezone: str
    backfill: int
    next_run_at: datetime | None
    last_tick: datetime | None
    orphaned: bool
    now: datetime


def claim_due(limit: int) -> Statement[list[Due]]:
    """Lock up to `limit` due, unpaused, unbroken schedules other passes do not hold (SKIP
    LOCKED), with the database's now()."""
    if limit < 1:
        raise ValueError("the scheduler batch must be at least 1")
    return Statement(
        "schedule_claim_due",
        {"limit": limit},
        lambda rows: [Due(*r) for r in rows],
    )


@dataclass(frozen=True, slots=True)
class Advance:
    """What a pass writes back to one schedule it claimed."""

    name: str
    next_run_at: datetime | None
    tick: datetime | None = None
    job_id: int | None = None
    error: str | None = None


def advance(rows: Iterable[Advance]) -> Statement[int]:
    """Write the next tick (and the last run, or the error) of the claimed schedules."""
    payload = [
        {
            "name": a.name,
            "next_run_at": None if a.next_run_at is None else a.next_run_at.isoformat(),
            "tick": None if a.tick is None else a.tick.isoformat(),
            "job_id": a.job_id,
            "error": a.error,
        }
        for a in rows
    ]
    return Statement(
        "schedule_advance", {"rows": msgspec.json.encode(payload).decode()}, lambda r: len(r)
    )


@dataclass(frozen=True, slots=True)
class PassResult:
    """What one pass did: schedules claimed, jobs enqueued (created; a repeated key counts
    as not created), orphaned schedules whose ticks it skipped, schedules it marked broken,
    and whether the batch was full (more may be due)."""

    claimed: int
    enqueued: int
    skipped: list[str]
    broken: dict[str, str]
    full: bool


Pass = Generator[Statement[Any], Any, PassResult]


def scheduler_pass(limit: int) -> Pass:
    """One pass, run in one transaction by the caller: claim due schedules, enqueue each
    one's due ticks (the latest `backfill` of those missed) through the enqueue path with
    the tick's idempotency key, and advance next_run_at past the database's now()."""
    due: list[Due] = yield claim_due(limit)
    specs: list[JobSpec] = []
    owners: list[tuple[int, datetime]] = []  # per spec: index into updates, its tick
    updates: list[Advance] = []
    skipped: list[str] = []
    broken: dict[str, str] = {}
    for row in due:
        try:
            when = timing(row.cron, row.every, row.timezone)
            upcoming = when.next_after(row.now)
            ticks = []
            if row.next_run_at is not None:
                ticks = when.due(row.next_run_at, row.now, row.backfill)
            if row.last_tick is not None:
                # Never a tick at or before the last one enqueued, even if the database
                # clock went back (a failover): its key would name an existing job.
                ticks = [t for t in ticks if t > row.last_tick]
            key = row.name
            batch = [
                JobSpec(
                    row.kind, row.args, row.queue, row.priority, idempotency_key=tick_key(key, t)
                )
                for t in ticks
            ]
            for job in batch:
                contract.check(job)
        except (InvalidJobError, CronSimError, StopIteration, ValueError, OverflowError) as exc:
            message = str(exc) or type(exc).__name__
            broken[row.name] = message
            updates.append(Advance(row.name, row.next_run_at, error=message))
            continue
        if ticks and row.orphaned:
            skipped.append(row.name)
            ticks, batch = [], []
        updates.append(Advance(row.name, upcoming))
        for tick, job in zip(ticks, batch, strict=True):
            owners.append((len(updates) - 1, tick))
            specs.append(job)
    created = 0
    if specs:
        enqueued: list[Enqueued] = yield lease.enqueue_many(specs)
        for (index, tick), result in zip(owners, enqueued, strict=True):
            created += result.created
            ran = updates[index]
            updates[index] = Advance(ran.name, ran.next_run_at, tick, result.id)
    if updates:
        yield advance(updates)
    return PassResult(len(due), created, skipped, broken, len(due) == limit)


def run_pass(conn: psycopg.Connection[Any], limit: int, schema: str) -> PassResult:
    """`scheduler_pass` on a sync connection, in one transaction (tests, benchmarks)."""
    from broker import _executor as executor

    with conn.transaction():
        return executor.drive(scheduler_pass(limit), lambda stmt: executor.run(conn, stmt, schema))
