"""Task registry for workers: the `@task` decorator, `Retry`/`Fail`, and the job context.

A task is a plain function (sync or async) registered under a kind. The worker calls it
with the job's args as keyword arguments, plus `ctx=` (a `JobContext`) when the function
declares a parameter named `ctx`. Its return value becomes the job's result (JSON); an
exception fails the attempt, to be retried per the task's policy.

`cron=` or `every=` also makes the task periodic: workers that run it declare the schedule
(named after the kind) at start, and their schedulers enqueue one job per tick
(broker.schedules).
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, overload

from broker.errors import ConfigError, InvalidJobError
from broker.lease import DEFAULT_MAX_SNOOZES

if TYPE_CHECKING:
    from broker.schedules import ScheduleSpec

F = TypeVar("F", bound=Callable[..., Any])

RetryPolicy = bool | Callable[[int], float]
"""True: retry with the database's backoff; False: the first failure is final;
a callable: attempt number -> delay in seconds before the next attempt."""


class Retry(Exception):
    """Raise from a handler to retry this job after `delay` seconds (None: default backoff).

    Counts as an attempt: when attempts are exhausted the job ends `failed`.
    """

    def __init__(self, delay: float | None = None, reason: str = "retry requested") -> None:
        super().__init__(reason)
        self.delay = delay
        self.reason = reason


class Fail(Exception):
    """Raise from a handler to fail the job now, without further attempts."""


class Snooze(Exception):
    """Raise from a handler to run this job again after `delay` seconds (database time),
    without counting an attempt. A job may snooze its task's `max_snoozes` times (100 by
    default); the snooze after that fails it, saying so."""

    def __init__(self, delay: float) -> None:
        super().__init__(f"snooze for {delay}s")
        self.delay = delay


@dataclass(frozen=True, slots=True)
class Task:
    """A registered handler and its policy."""

    kind: str
    fn: Callable[..., Any]
    queue: str = "default"
    max_attempts: int | None = None
    timeout: float | None = None
    retry: RetryPolicy = True
    is_async: bool = False
    wants_ctx: bool = False
    # Set for a periodic task: the schedule its workers declare (named after the kind).
    schedule: ScheduleSpec | None = None
    max_snoozes: int = DEFAULT_MAX_SNOOZES

    def retry_delay(self, attempt: int) -> float | None:
        """Delay before the next attempt under this task's policy (None: database backoff)."""
        if callable(self.retry):
            return float(self.retry(attempt))
        return None


_registry: dict[str, Task] = {}
_registry_lock = threading.Lock()


@overload
def task(kind: F) -> F: ...


@overload
def task(
    kind: str | None = None,
    *,
    queue: str = "default",
    max_attempts: int | None = None,
    timeout: float | None = None,
    retry: RetryPolicy = True,
    cron: str | None = None,
    every: float | None = None,
    tz: str | None = None,
    args: dict[str, Any] | None = None,
    backfill: int | None = None,
    max_snoozes: int = DEFAULT_MAX_SNOOZES,
) -> Callable[[F], F]: ...


def task(
    kind: str | F | None = None,
    *,
    queue: str = "default",
    max_attempts: int | None = None,
    timeout: float | None = None,
    retry: RetryPolicy = True,
    cron: str | None = None,
    every: float | None = None,
    tz: str | None = None,
    args: dict[str, Any] | None = None,
    backfill: int | None = None,
    max_snoozes: int = DEFAULT_MAX_SNOOZES,
) -> F | Callable[[F], F]:
    """Register a handler for jobs of `kind` (default: the function's qualified name).

    `queue` is where the task's jobs usually go (workers started without --queues serve
    the queues of their tasks); `max_attempts` caps attempts on the worker side, on top
    of the job's own max_attempts; `timeout` (seconds) applies when the job sets none;
    `max_snoozes` is how many times a job may `Snooze` before the next snooze fails it.

    Periodic tasks: `cron` (five fields, read in time zone `tz`, default UTC) or `every`
    (seconds, at least 1) declares a schedule named after the kind, enqueuing a job with
    `args` on each tick; after downtime the latest missed tick is enqueued, or up to
    `backfill` of them. Raises InvalidJobError for a bad schedule, ConfigError when another
    function already holds the kind.
    """
    if callable(kind):
        return _register(kind, None, "default", None, None, True, None)

    def decorate(fn: F) -> F:
        periodic = None
        if cron is not None or every is not None or tz is not None or backfill is not None:
            periodic = _schedule(
                kind or f"{fn.__module__}.{fn.__qualname__}", queue, cron, every, tz, args, backfill
            )
        elif args is not None:
            raise InvalidJobError("task args= is for periodic tasks: give cron= or every=")
        return _register(fn, kind, queue, max_attempts, timeout, retry, periodic, max_snoozes)

    return decorate


def _schedule(
    name: str,
    queue: str,
    cron: str | None,
    every: float | None,
    tz: str | None,
    args: dict[str, Any] | None,
    backfill: int | None,
) -> ScheduleSpec:
    from broker import schedules

    spec = schedules.ScheduleSpec(
        name=name,
        kind=name,
        cron=cron,
        every=every,
        timezone=tz,
        args=args if args is not None else {},
        queue=queue,
        backfill=schedules.DEFAULT_BACKFILL if backfill is None else backfill,
    )
    try:
        schedules.check(spec)
    except InvalidJobError as exc:
        raise InvalidJobError(f"task {name!r}: {exc}") from None
    return spec


def _register(
    fn: F,
    kind: str | None,
    queue: str,
    max_attempts: int | None,
    timeout: float | None,
    retry: RetryPolicy,
    periodic: ScheduleSpec | None,
    max_snoozes: int = DEFAULT_MAX_SNOOZES,
) -> F:
    name = kind or f"{fn.__module__}.{fn.__qualname__}"
    if max_snoozes < 0:
        raise ConfigError(f"task {name!r}: max_snoozes must not be negative")
    if max_attempts is not None and max_attempts < 1:
        raise ConfigError(f"task {name!r}: max_attempts must be at least 1")
    if timeout is not None and timeout <= 0:
        raise ConfigError(f"task {name!r}: timeout must be positive")
    params = inspect.signature(fn).parameters
    entry = Task(
        kind=name,
        fn=fn,
        queue=queue,
        max_attempts=max_attempts,
        timeout=timeout,
        retry=retry,
        is_async=inspect.iscoroutinefunction(fn),
        wants_ctx="ctx" in params,
        schedule=periodic,
        max_snoozes=max_snoozes,
    )
    with _registry_lock:
        existing = _registry.get(name)
        # Re-importing the same module (e.g. under two names) must not be an error.
        if existing is not None and not _same_function(existing.fn, fn):
            raise ConfigError(f"task kind {name!r} is already registered by {existing.fn!r}")
        _registry[name] = entry
    return fn


def _same_function(a: Callable[..., Any], b: Callable[..., Any]) -> bool:
    return getattr(a, "__qualname__", None) == getattr(b, "__qualname__", None) and getattr(
        a, "__module__", None
    ) == getattr(b, "__module__", None)


def registered() -> dict[str, Task]:
    """A snapshot of every registered task, by kind."""
    with _registry_lock:
        return dict(_registry)


def declared_schedules() -> list[ScheduleSpec]:
    """The schedules of every registered periodic task, by name."""
    with _registry_lock:
        return sorted(
            (t.schedule for t in _registry.values() if t.schedule is not None),
            key=lambda spec: spec.name,
        )


# Asked, in order, for a kind nothing registered (broker.django finds Django tasks by their
# module path); a finder registers what it finds, so it is asked once per kind it knows.
TaskFinder = Callable[[str], Task | None]
_finders: list[TaskFinder] = []


def add_finder(finder: TaskFinder) -> None:
    """Let `get_task` ask `finder` for kinds no `@task` registered."""
    with _registry_lock:
        if finder not in _finders:
            _finders.append(finder)


def get_task(kind: str) -> Task | None:
    """The task registered for `kind`, else the first a finder (`add_finder`) gives."""
    # Looked up for every job a worker starts: a registered kind needs no lock (reading a
    # dict is atomic; the lock orders registrations and the finder list).
    found = _registry.get(kind)
    if found is not None:
        return found
    with _registry_lock:
        found = _registry.get(kind)
        finders = list(_finders)
    for finder in finders:
        if found is not None:
            break
        found = finder(kind)
    return found


@dataclass(eq=False)
class JobContext:
    """What a running handler knows about its job, and how it hears about cancellation.

    `cancelled` is set (on the event loop) when the worker stops the handler: the job was
    cancelled, timed out, its lease was lost, or the worker is shutting down. Sync handlers
    running in threads should poll `is_cancelled`; the worker cannot interrupt a thread.
    """

    id: int
    attempt: int
    epoch: int
    kind: str
    queue: str
    worker_id: str
    _log: Callable[[str], None] = field(repr=False)
    _loop: asyncio.AbstractEventLoop = field(repr=False)
    cancel_reason: str | None = None
    # Made on first use: most handlers never look, and two events per job were a
    # measurable share of a no-op job's cost in the worker.
    _cancelled: asyncio.Event | None = field(default=None, repr=False)

    @property
    def cancelled(self) -> asyncio.Event:
        """Set (on the event loop) once the worker has asked this handler to stop."""
        if self._cancelled is None:
            self._cancelled = asyncio.Event()
            if self.cancel_reason is not None:
                self._cancelled.set()
        return self._cancelled

    @property
    def is_cancelled(self) -> bool:
        """True once the worker has asked this handler to stop (safe from any thread: the
        reason is one attribute, written once, on the loop)."""
        return self.cancel_reason is not None

    def log(self, line: str) -> None:
        """Append a line to the job's log (job_logs); safe from handler threads.

        Lines are written in batches under the job's lease; lines logged after the lease
        is lost are dropped.
        """
        text = str(line)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._log(text)
        else:
            self._loop.call_soon_threadsafe(self._log, text)

    def _cancel(self, reason: str) -> None:
        # Called on the loop by the worker only.
        if self.cancel_reason is None:
            self.cancel_reason = reason
        if self._cancelled is not None:
            self._cancelled.set()
