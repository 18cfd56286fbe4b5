"""Django's task API on pg-broker: the task backend, and what `python -m broker.worker
--django` needs to run Django tasks.

Django 6 ships the API as `django.tasks` (Python 3.12+); on Python 3.11 the `django-tasks`
backport gives the same names as `django_tasks`. This module uses `django.tasks` when it
imports, else the backport (`pip install 'pg-broker[django]'` picks the right one).

    TASKS = {"default": {"BACKEND": "broker.django.Backend"}}

OPTIONS, all optional (an unknown one is refused, naming it):
    DATABASE_URL   the broker's database; default BROKER_DATABASE_URL, else the Django
                   database below when it is PostgreSQL
    SCHEMA         the broker's schema; default BROKER_SCHEMA, else `broker`
    DATABASE       the Django database alias whose transactions enqueues join (`default`)
    MAX_ATTEMPTS   attempts per job (default 1: Django's API has no retry policy, so a task
                   that raises is FAILED, as with Django's own backends)
    POOL_SIZE      connections this process keeps to the broker's database (4)

One enqueue is one job: kind = the task's module path (`myapp.tasks.send_email`), args =
`{"args": [...], "kwargs": {...}}` (JSON, checked by the broker's one enqueue contract,
broker.spec, after Django's own JSON normalisation), queue = queue_name, priority =
priority (Django's -100..100 as is: higher runs first in both), run_at = run_after. The
job id is the result id.

States (Django has no "waiting" and no "cancelled"):
    waiting   -> READY       waits for dependencies (Django enqueues have none)
    queued    -> READY       also between attempts: errors holds the failed ones
    running   -> RUNNING
    succeeded -> SUCCESSFUL  return_value is the job's result
    failed    -> FAILED      errors: one TaskError per failed attempt, with its traceback
    cancelled -> FAILED      errors ends with a `broker.django.JobCancelled` entry

Transactions: when the DATABASE alias is PostgreSQL through Django's psycopg 3 backend and
is the broker's database (same server address, port and database name), the job's INSERT
runs on Django's own connection, inside the caller's `transaction.atomic()`: it commits
or rolls back with the caller's writes. Otherwise (psycopg2, another
database engine, another database) the id is reserved at once and the INSERT runs in
`transaction.on_commit()`: a rollback drops the job, but a crash between the commit and
the INSERT loses it. Outside atomic() both enqueue at once.
"""

from __future__ import annotations

import asyncio
import atexit
import builtins
import contextlib
import importlib
import inspect
import os
import re
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from types import ModuleType
from typing import Any

import psycopg
from asgiref.sync import sync_to_async

from broker import _copy as copy
from broker import _executor as executor
from broker import lease
from broker import spec as contract
from broker.client import Broker
from broker.config import DEFAULT_SCHEMA, validate_schema
from broker.errors import ConfigError, InvalidJobError, JobNotFound
from broker.spec import JobSpec
from broker.task import JobContext, add_finder, get_task
from broker.task import Task as BrokerTask
from broker.task import task as broker_task
from broker.types import Job, JobEvent, JobState


def _api_modules() -> tuple[ModuleType, ModuleType, ModuleType, ModuleType, Callable[..., Any]]:
    """(the API, its backends.base, its exceptions, its signals, its normalize_json)."""
    try:
        api = importlib.import_module("django.tasks")
    except ImportError:
        try:
            api = importlib.import_module("django_tasks")
        except ImportError:
            raise ImportError(
                "broker.django needs Django's task API: Django 6 (Python 3.12+) or the "
                "django-tasks backport; pip install 'pg-broker[django]'"
            ) from None
        normalize = importlib.import_module("django_tasks.utils").normalize_json
    else:
        normalize = importlib.import_module("django.utils.json").normalize_json
    name = api.__name__
    return (
        api,
        importlib.import_module(f"{name}.backends.base"),
        importlib.import_module(f"{name}.exceptions"),
        importlib.import_module(f"{name}.signals"),
        normalize,
    )


tasks_api, _backends, _exceptions, _signals, _normalize_json = _api_modules()
_base = importlib.import_module(f"{tasks_api.__name__}.base")
Task = _base.Task
TaskContext = _base.TaskContext
TaskResult = _base.TaskResult
TaskResultStatus = _base.TaskResultStatus
TaskError = _base.TaskError
_BaseTaskBackend: Any = _backends.BaseTaskBackend
TaskResultDoesNotExist = _exceptions.TaskResultDoesNotExist
# Django 6 calls it InvalidTask, the backport InvalidTaskError.
InvalidTask = getattr(_exceptions, "InvalidTask", None) or _exceptions.InvalidTaskError

DEFAULT_MAX_ATTEMPTS = 1
DEFAULT_POOL_SIZE = 4
OPTIONS = ("DATABASE_URL", "SCHEMA", "DATABASE", "MAX_ATTEMPTS", "POOL_SIZE")

STATUS: Mapping[JobState, Any] = {
    "waiting": TaskResultStatus.READY,
    "queued": TaskResultStatus.READY,
    "running": TaskResultStatus.RUNNING,
    "succeeded": TaskResultStatus.SUCCESSFUL,
    "failed": TaskResultStatus.FAILED,
    "cancelled": TaskResultStatus.FAILED,
}
"""The Django result status of each pg-broker job state."""


class JobCancelled(Exception):
    """Stands in a result's errors for a cancelled job (cancelled by an operator, past its
    deadline, or superseded): Django's API has no cancelled status, so it reads FAILED."""


class WorkerError(Exception):
    """Stands in a result's errors for an attempt that ended without an exception from the
    task function: its lease expired (the worker died or stalled) or no worker had it."""


# --- the backend -----------------------------------------------------------------------------


class Backend(_BaseTaskBackend):  # type: ignore[misc]
    """A Django task backend whose tasks are pg-broker jobs (module docstring: OPTIONS, the
    state mapping, transactions). Raises ImproperlyConfigured for a bad OPTIONS entry."""

    supports_defer = True  # run_after becomes the job's run_at
    supports_async_task = True  # the worker awaits coroutine functions on its loop
    supports_get_result = True  # from any process: results live in the database
    supports_priority = True  # claims go highest priority first

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        from django.core.exceptions import ImproperlyConfigured

        super().__init__(alias, params)
        options: dict[str, Any] = dict(self.options)
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise ImproperlyConfigured(
                f"TASKS[{alias!r}]['OPTIONS']: unknown option {', '.join(unknown)}; "
                f"known: {', '.join(OPTIONS)}"
            )
        self.database: str = options.get("DATABASE", "default")
        self.max_attempts: int = options.get("MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS)
        self.pool_size: int = options.get("POOL_SIZE", DEFAULT_POOL_SIZE)
        self._url: str | None = options.get("DATABASE_URL") or os.environ.get("BROKER_DATABASE_URL")
        try:
            self.schema = validate_schema(
                options.get("SCHEMA") or os.environ.get("BROKER_SCHEMA") or DEFAULT_SCHEMA
            )
            # The one enqueue contract judges MAX_ATTEMPTS, as it judges every job.
            contract.check(JobSpec("probe", max_attempts=self.max_attempts))
        except (ConfigError, InvalidJobError) as exc:
            raise ImproperlyConfigured(f"TASKS[{alias!r}]['OPTIONS']: {exc}") from None
        from django.conf import settings

        if self.database not in settings.DATABASES:
            raise ImproperlyConfigured(
                f"TASKS[{alias!r}]['OPTIONS']: DATABASE {self.database!r} is not in DATABASES"
            )
        if not (type(self.pool_size) is int and self.pool_size >= 1):
            raise ImproperlyConfigured(
                f"TASKS[{alias!r}]['OPTIONS']: POOL_SIZE must be a whole number of at least 1"
            )

    # configuration

    def database_url(self) -> str:
        """The broker's database. Raises ImproperlyConfigured when none is set and the
        Django database is not PostgreSQL."""
        from django.core.exceptions import ImproperlyConfigured

        url = self._url or _django_database_url(self.database)
        if url is None:
            raise ImproperlyConfigured(
                f"TASKS[{self.alias!r}]: no database for pg-broker: set BROKER_DATABASE_URL "
                "or OPTIONS['DATABASE_URL'] (or use a PostgreSQL DATABASES entry)"
            )
        return url

    def check(self, **kwargs: Any) -> list[Any]:
        from django.core import checks
        from django.core.exceptions import ImproperlyConfigured

        try:
            self.database_url()
        except ImproperlyConfigured as exc:
            return [checks.Error(str(exc), obj=self.alias, id="broker.E001")]
        return []

    def client(self) -> Broker:
        """This process's client of the broker's database (one pool per URL and schema,
        shared by every thread's instance of the backend)."""
        return _client(self.database_url(), self.schema, self.pool_size)

    def validate_task(self, task: Any) -> None:
        """Django's rules, then the broker's for the names: the module path must be a job
        kind and the queue a queue name (broker.spec). Raises InvalidTask."""
        super().validate_task(task)
        try:
            contract.check(JobSpec(task.module_path, queue=task.queue_name))
        except InvalidJobError as exc:
            raise InvalidTask(f"{task.module_path}: {exc}") from None

    # enqueue

    def enqueue(self, task: Any, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        """Enqueue one job for `task` and return its READY result (module docstring says
        when it joins the caller's transaction). Raises InvalidTask, or InvalidJobError for
        arguments outside the job contract (not JSON, NUL in a string, nested too deep)."""
        self.validate_task(task)
        spec = self._spec(task, args, kwargs)
        conn = self._joinable_connection()
        job_id = self._enqueue_on(conn, spec) if conn is not None else self._on_commit(spec)
        result = TaskResult(
            task=task,
            id=str(job_id),
            status=TaskResultStatus.READY,
            enqueued_at=_now(),
            started_at=None,
            finished_at=None,
            last_attempted_at=None,
            args=spec.args["args"],
            kwargs=spec.args["kwargs"],
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )
        _signals.task_enqueued.send(type(self), task_result=result)
        return result

    async def aenqueue(self, task: Any, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        """`enqueue` in Django's thread for this context (as the async ORM does), whose
        connection holds the caller's transaction."""
        return await sync_to_async(self.enqueue, thread_sensitive=True)(task, args, kwargs)

    def _spec(self, task: Any, args: Sequence[Any], kwargs: Mapping[str, Any]) -> JobSpec:
        try:
            payload = {"args": _normalize_json(list(args)), "kwargs": _normalize_json(kwargs)}
        except (TypeError, ValueError) as exc:
            raise InvalidJobError(f"task arguments must be JSON: {exc}") from None
        spec = JobSpec(
            task.module_path,
            payload,
            queue=task.queue_name,
            priority=task.priority,
            run_at=_aware(task.run_after),
            max_attempts=self.max_attempts,
        )
        contract.check(spec)
        return spec

    def _joinable_connection(self) -> psycopg.Connection[Any] | None:
        """Django's psycopg 3 connection when it is the broker's database, else None."""
        from django.db import connections

        connection = connections[self.database]
        key = (self.database, self.database_url())
        joins = _joins.get(key)
        if joins is None:
            joins = _joins[key] = self._same_database(connection)
        if not joins:
            return None
        connection.ensure_connection()
        raw: psycopg.Connection[Any] = connection.connection
        return raw

    def _same_database(self, connection: Any) -> bool:
        if connection.vendor != "postgresql":
            return False
        from django.db.backends.postgresql.psycopg_any import is_psycopg3

        if not is_psycopg3:
            return False
        with connection.cursor() as cur:
            cur.execute(_IDENTITY)
            django_side = tuple(cur.fetchone())
        with self.client().pool.connection() as conn:
            broker_side = conn.execute(_IDENTITY).fetchone()
        return bool(django_side == broker_side)

    def _enqueue_on(self, conn: psycopg.Connection[Any], spec: JobSpec) -> int:
        # No savepoint of its own (it cost 0.2 ms of 1.3 per enqueue, decision 019): the
        # spec was checked already, and an INSERT the database still refuses leaves the
        # transaction as a failed ORM query does; wrap the call in atomic() to recover.
        return executor.run(conn, lease.enqueue_many([spec]), self.schema)[0].id

    def _on_commit(self, spec: JobSpec) -> int:
        from django.db import transaction

        client = self.client()
        db_now, ids = client.run(copy.reserve(1))

        def insert() -> None:
            steps = copy.copy_enqueue([spec], client.settings.jobs_channel, (db_now, ids))
            with client.pool.connection() as conn, conn.transaction():
                executor.run_steps(conn, steps, self.schema)

        transaction.on_commit(insert, using=self.database)
        return ids[0]

    # results

    def get_result(self, result_id: str) -> Any:
        """The job as a Django result (module docstring: the state mapping). Raises
        TaskResultDoesNotExist for an id no job has, or a job that is no Django task."""
        job_id = _job_id(result_id)
        client = self.client()
        try:
            job = client.get_job(job_id)
        except JobNotFound:
            raise TaskResultDoesNotExist(result_id) from None
        return self._result(job, client.events(job_id))

    async def aget_result(self, result_id: str) -> Any:
        return await sync_to_async(self.get_result, thread_sensitive=False)(result_id)

    def _result(self, job: Job, events: list[JobEvent]) -> Any:
        task = find_django_task(job.kind)
        if task is None:
            raise TaskResultDoesNotExist(f"job {job.id} ({job.kind}) is not a Django task")
        # A job enqueued by another door may hold values Django refuses: then the task's own.
        with contextlib.suppress(InvalidTask):
            task = task.using(priority=job.priority, queue_name=job.queue)
        claims = {e.epoch: e for e in events if e.event == "claimed" and e.epoch is not None}
        # Attempts as pg-broker counts them: a release (shutdown) or a snooze gives its back.
        uncounted = {e.epoch for e in events if e.event in ("released", "snoozed")}
        attempts = [claims[epoch] for epoch in sorted(claims) if epoch not in uncounted]
        result = TaskResult(
            task=task,
            id=str(job.id),
            status=STATUS[job.state],
            enqueued_at=job.created_at,
            started_at=min((e.at for e in claims.values()), default=None),
            finished_at=job.finished_at,
            last_attempted_at=job.started_at,
            args=job.args.get("args", []),
            kwargs=job.args.get("kwargs", {}),
            backend=self.alias,
            errors=_errors(job, events),
            worker_ids=[e.worker_id or "" for e in attempts],
        )
        if job.state == "succeeded":
            object.__setattr__(result, "_return_value", job.result)
        return result


_IDENTITY = "SELECT inet_server_addr()::text, inet_server_port(), current_database()"
# (Django alias, broker URL) -> whether enqueues run on Django's connection.
_joins: dict[tuple[str, str], bool] = {}
_clients: dict[tuple[str, str, int], Broker] = {}
_clients_lock = threading.Lock()


def _client(url: str, schema: str, pool_size: int) -> Broker:
    # Keyed by pid too: a forked process (a preloading server) opens its own pool.
    key = (url, schema, os.getpid())
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            if not _clients:
                atexit.register(close)
            client = _clients[key] = Broker.connect(url, schema=schema, max_size=pool_size)
        return client


def close() -> None:
    """Close this process's pools (at exit by itself: a pool left to the garbage collector
    at interpreter exit waits seconds for its threads)."""
    with _clients_lock:
        clients = [c for (_, _, pid), c in _clients.items() if pid == os.getpid()]
        _clients.clear()
        _joins.clear()
    for client in clients:
        client.close()


def _django_database_url(alias: str) -> str | None:
    """A libpq URL for Django's database `alias`, if it is PostgreSQL."""
    from django.conf import settings
    from psycopg.conninfo import make_conninfo

    entry = settings.DATABASES.get(alias, {})
    if "postgresql" not in entry.get("ENGINE", ""):
        return None
    params = {
        "dbname": entry.get("NAME"),
        "user": entry.get("USER"),
        "password": entry.get("PASSWORD"),
        "host": entry.get("HOST"),
        "port": entry.get("PORT"),
    }
    return make_conninfo(**{k: str(v) for k, v in params.items() if v})


def _now() -> datetime:
    from django.utils import timezone

    now: datetime = timezone.now()
    return now


def _aware(run_after: datetime | None) -> datetime | None:
    """run_after as an aware time: with USE_TZ = False Django allows a naive one, read in
    the default time zone (TIME_ZONE)."""
    from django.utils import timezone

    if run_after is None or timezone.is_aware(run_after):
        return run_after
    aware: datetime = timezone.make_aware(run_after)
    return aware


def _job_id(result_id: str) -> int:
    text = str(result_id)
    if not (text.isascii() and text.isdigit() and 0 < int(text) <= contract.JOB_ID_MAX):
        raise TaskResultDoesNotExist(result_id)
    return int(text)


# --- errors ----------------------------------------------------------------------------------

# The line format_exception ends an exception with: its class (with its module unless
# builtins or __main__), then ": message" unless the message is empty.
_EXCEPTION_LINE = re.compile(r"([A-Za-z_][\w.]*)(?::|$)")


def exception_path(error: str) -> str | None:
    """The class path of the exception a stored traceback ends with (`builtins.ValueError`,
    `myapp.tasks.Declined`), or None when `error` is not a Python traceback."""
    lines = error.splitlines()
    frames = [i for i, line in enumerate(lines) if line.startswith('  File "')]
    if not frames:
        return None
    # After the last frame: its source lines (indented), then the exception's own line.
    for line in lines[frames[-1] + 1 :]:
        if line.startswith("    "):
            continue
        match = _EXCEPTION_LINE.match(line)
        if match is None:
            return None
        name = match.group(1)
        if "." in name:
            return name
        return f"builtins.{name}" if isinstance(getattr(builtins, name, None), type) else None
    return None


def _task_error(text: str, stand_in: type[Exception] = WorkerError) -> Any:
    path = exception_path(text) or f"{stand_in.__module__}.{stand_in.__qualname__}"
    return TaskError(exception_class_path=path, traceback=text)


def _errors(job: Job, events: list[JobEvent]) -> list[Any]:
    """One TaskError per failed attempt, oldest first, and one for a cancellation."""
    errors = []
    for event in events:
        if event.detail and isinstance(event.detail.get("error"), str):
            errors.append(_task_error(event.detail["error"]))
        elif event.event == "lease_expired":
            errors.append(_task_error("lease expired: the worker running it died or stalled"))
    if job.state == "cancelled":
        errors.append(_task_error(job.last_error or "cancelled", JobCancelled))
    elif job.state == "failed" and not errors:
        errors.append(_task_error(job.last_error or "failed"))
    return errors


# --- the worker side -------------------------------------------------------------------------


def find_django_task(kind: str) -> Any:
    """The Django Task whose module path is `kind`, or None. Only modules already imported
    or inside an installed app are imported: a job's kind is data, and must not make a
    process import whatever module it names."""
    module_name, _, attribute = kind.rpartition(".")
    if not module_name or not _importable(module_name):
        return None
    try:
        found = getattr(importlib.import_module(module_name), attribute, None)
    except ImportError:
        return None
    return found if isinstance(found, Task) and found.module_path == kind else None


def _importable(module_name: str) -> bool:
    if module_name in sys.modules:
        return True
    from django.apps import apps

    return any(
        module_name == app.name or module_name.startswith(app.name + ".")
        for app in apps.get_app_configs()
    )


def _find(kind: str) -> BrokerTask | None:
    """broker.task's finder: the worker's handler for a Django task, registered."""
    task = find_django_task(kind)
    if task is None:
        return None
    register(task)
    return get_task(kind)


def register(task: Any) -> None:
    """Register a worker handler for the Django `task` under its module path: it calls the
    task function with the job's args (and a TaskContext first when the task takes one),
    returns its JSON-normalised return value as the job's result, and sends Django's
    task_started and task_finished signals."""
    kind = task.module_path

    if inspect.iscoroutinefunction(task.func):

        async def run_async(
            ctx: JobContext, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None
        ) -> Any:
            kwargs = kwargs or {}
            result = await asyncio.to_thread(_started, task, ctx)
            call = (TaskContext(task_result=result), *args) if task.takes_context else args
            try:
                value = _normalize_json(await task.func(*call, **kwargs))
            except Exception as exc:
                _finished(task, result, exc)
                raise
            _finished(task, result, None, value)
            return value

        broker_task(kind, queue=task.queue_name)(run_async)
        return

    def run(
        ctx: JobContext, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None
    ) -> Any:
        from django.db import close_old_connections

        kwargs = kwargs or {}
        # As a request does: a connection Django's CONN_MAX_AGE or an error retired is
        # replaced before the task, and closed after it when due.
        close_old_connections()
        try:
            result = _started(task, ctx)
            call = (TaskContext(task_result=result), *args) if task.takes_context else args
            try:
                value = _normalize_json(task.func(*call, **kwargs))
            except Exception as exc:
                _finished(task, result, exc)
                raise
            _finished(task, result, None, value)
            return value
        finally:
            close_old_connections()

    broker_task(kind, queue=task.queue_name)(run)


def _backend_of(task: Any) -> Backend:
    backend = task.get_backend()
    if isinstance(backend, Backend):
        return backend
    return broker_backends()[0]


def _started(task: Any, ctx: JobContext) -> Any:
    backend = _backend_of(task)
    result = backend.get_result(str(ctx.id))
    _signals.task_started.send(type(backend), task_result=result)
    return result


def _finished(task: Any, result: Any, raised: BaseException | None, value: Any = None) -> None:
    import traceback

    object.__setattr__(result, "finished_at", _now())
    if raised is None:
        object.__setattr__(result, "status", TaskResultStatus.SUCCESSFUL)
        object.__setattr__(result, "_return_value", value)
    else:
        kind = type(raised)
        error = TaskError(
            exception_class_path=f"{kind.__module__}.{kind.__qualname__}",
            traceback="".join(traceback.format_exception(raised)),
        )
        result.errors.append(error)
        object.__setattr__(result, "status", TaskResultStatus.FAILED)
    _signals.task_finished.send(type(_backend_of(task)), task_result=result)


def broker_backends() -> list[Backend]:
    """Every TASKS backend that is a pg-broker Backend. Raises ImproperlyConfigured when
    there is none."""
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    found = [
        backend
        for alias in getattr(settings, "TASKS", {})
        if isinstance(backend := tasks_api.task_backends[alias], Backend)
    ]
    if not found:
        raise ImproperlyConfigured("no TASKS backend is broker.django.Backend")
    return found


def setup_worker() -> list[str]:
    """Prepare this process to run Django tasks: `django.setup()` (DJANGO_SETTINGS_MODULE
    names the settings; the working directory is importable, as under manage.py), import
    every installed app's `tasks` module and register its tasks, let the worker find any
    other Django task by its module path, and take the broker's database and schema from
    the first pg-broker backend unless BROKER_DATABASE_URL / BROKER_SCHEMA say otherwise.

    Returns the queues to serve by default: those of the tasks found and those the
    backends accept (QUEUES). Raises ImproperlyConfigured (Django's) for bad settings."""
    import django
    from django.utils.module_loading import autodiscover_modules

    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    django.setup()
    autodiscover_modules("tasks")
    backends = broker_backends()
    first = backends[0]
    os.environ.setdefault("BROKER_DATABASE_URL", first.database_url())
    os.environ.setdefault("BROKER_SCHEMA", first.schema)
    add_finder(_find)
    queues: set[str] = set()
    for module in list(sys.modules.values()):
        for value in list(vars(module).values()) if _is_tasks_module(module) else ():
            if isinstance(value, Task) and _find(value.module_path) is not None:
                queues.add(value.queue_name)
    for backend in backends:
        queues.update(backend.queues)
    return sorted(queues) or [contract.DEFAULT_QUEUE]


def _is_tasks_module(module: ModuleType | None) -> bool:
    name = getattr(module, "__name__", "")
    return name == "tasks" or name.endswith(".tasks")
