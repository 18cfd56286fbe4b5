"""The `worker` command line, shared by `python -m broker.worker` and `broker worker`.

Every option also reads an environment variable (BROKER_TASKS, BROKER_QUEUES,
BROKER_CONCURRENCY, ...), so a container needs no arguments.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
import time

import click

from broker import _env, _logging
from broker._durations import Duration
from broker._exits import EXIT_OK, error_line, exit_code
from broker._logging import DEFAULT_LOG_FORMAT, LOG_FORMATS
from broker.config import Settings
from broker.errors import BrokerError, first_line
from broker.worker import reaper
from broker.worker.config import (
    DEFAULT_CONCURRENCY,
    DEFAULT_LOG_LEVEL,
    DEFAULT_POLL_INTERVAL,
    DEFAULT_PROCESSES,
    DEFAULT_SEQ,
    DEFAULT_SHUTDOWN_GRACE,
    WorkerConfig,
)
from broker.worker.metrics import (
    DEFAULT_METRICS_HOST,
    Metrics,
    MetricsServer,
    PrometheusMetrics,
    process_registry,
)

log = logging.getLogger("broker.worker")

THREAD_EXIT_GRACE = 2.0
# Where the worker command keeps its own arguments (click's ctx.meta).
ARGV = "broker.worker.argv"


def _csv(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def import_tasks(modules: list[str]) -> None:
    """Import the task modules (registering their tasks); the working directory is
    importable, as it is under `python -m`."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    for name in modules:
        importlib.import_module(name)


class _PassThrough(click.Command):
    """Keeps the arguments it parsed, so a supervisor hands its children the same ones."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta[ARGV] = list(args)
        return super().parse_args(ctx, args)


@click.command("worker", cls=_PassThrough)
@click.option("--tasks", envvar="BROKER_TASKS", help="Task modules to import, comma-separated.")
@click.option(
    "--queues",
    envvar="BROKER_QUEUES",
    help="Queues to serve, comma-separated [default: the queues of the imported tasks].",
)
@click.option(
    "--concurrency",
    envvar="BROKER_CONCURRENCY",
    type=click.IntRange(min=1),
    default=DEFAULT_CONCURRENCY,
    show_default=True,
    help="Jobs run at once by each process.",
)
@click.option(
    "--processes",
    envvar="BROKER_PROCESSES",
    type=click.IntRange(min=1),
    default=DEFAULT_PROCESSES,
    show_default=True,
    help="Worker processes to run under a supervisor that restarts dead ones.",
)
@click.option(
    "--seq",
    envvar="BROKER_WORKER_SEQ",
    type=click.IntRange(min=0),
    default=DEFAULT_SEQ,
    show_default=True,
    help="This process's number on the host: worker_id is host_id:seq.",
)
@click.option(
    "--poll-interval",
    envvar="BROKER_POLL_INTERVAL",
    type=Duration(min=0.001),
    default=DEFAULT_POLL_INTERVAL,
    show_default=True,
    help="Time between claims when no notification arrives (seconds, or e.g. 500ms, 2s).",
)
@click.option(
    "--reap-interval",
    envvar="BROKER_REAP_INTERVAL",
    type=Duration(min=0.01),
    default=reaper.DEFAULT_INTERVAL,
    show_default=True,
    help="Time between runs of the in-process reaper.",
)
@click.option(
    "--shutdown-grace",
    envvar="BROKER_SHUTDOWN_GRACE",
    type=Duration(),
    default=DEFAULT_SHUTDOWN_GRACE,
    show_default=True,
    help="Time running jobs get to finish after SIGTERM before they are handed back.",
)
@click.option(
    "--max-clock-skew",
    envvar="BROKER_MAX_CLOCK_SKEW",
    type=Duration(),
    default=None,
    help="Refuse to start when this host's clock is off the database's by more (e.g. 2s).",
)
@click.option(
    "--metrics-port",
    envvar="BROKER_METRICS_PORT",
    type=click.IntRange(min=1, max=65535),
    default=None,
    help="Serve Prometheus metrics on this port (with --processes, the supervisor serves "
    "the sum over its processes) [default: no metrics].",
)
@click.option(
    "--metrics-host",
    envvar="BROKER_METRICS_HOST",
    default=DEFAULT_METRICS_HOST,
    show_default=True,
    help="Address the metrics server listens on.",
)
@click.option(
    "--django",
    "django_tasks",
    envvar="BROKER_DJANGO",
    is_flag=True,
    default=False,
    help="Run Django tasks: django.setup() with DJANGO_SETTINGS_MODULE, then find each "
    "job's task by its module path (docs/django.md).",
)
@click.option(
    "--log-level",
    envvar="BROKER_LOG_LEVEL",
    default=DEFAULT_LOG_LEVEL,
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
@click.option(
    "--log-format",
    envvar="BROKER_LOG_FORMAT",
    default=DEFAULT_LOG_FORMAT,
    show_default=True,
    type=click.Choice(LOG_FORMATS),
    help="text for people, json for one JSON object per line (a log shipper).",
)
@click.pass_context
def worker(
    ctx: click.Context,
    tasks: str | None,
    queues: str | None,
    concurrency: int,
    processes: int,
    seq: int,
    poll_interval: float,
    reap_interval: float,
    shutdown_grace: float,
    max_clock_skew: float | None,
    metrics_port: int | None,
    metrics_host: str,
    django_tasks: bool,
    log_level: str,
    log_format: str,
) -> None:
    """Run jobs: claim from QUEUES, run the handlers registered in TASKS, report outcomes.

    SIGTERM/SIGINT stop claiming and give running jobs --shutdown-grace seconds; the
    rest are handed back to the queue (a second signal hands them back at once).
    """
    _logging.configure(log_level, log_format)
    if _supervisor_pid() is None:  # a supervisor's processes share its environment
        for line in _env.warnings():
            click.echo(line, err=True)
    modules = _csv(tasks)
    if not modules and not django_tasks:
        raise click.UsageError(
            "no task modules: pass --tasks pkg.module, set BROKER_TASKS, or pass --django"
        )
    metrics = (metrics_host, metrics_port) if metrics_port is not None else None
    if processes > 1:
        from broker.worker.supervisor import Supervisor

        try:
            sys.exit(Supervisor(processes, ctx.meta[ARGV], metrics).run())
        except BrokerError as exc:
            sys.exit(_report(exc))

    django_queues = _setup_django() if django_tasks else []
    try:
        import_tasks(modules)
    except ImportError as exc:
        raise click.UsageError(f"cannot import task module: {exc}") from exc
    served = _csv(queues)
    if not served and django_queues:
        from broker.task import registered

        served = sorted(set(django_queues) | {t.queue for t in registered().values()})

    code, ended = _run_one(
        served,
        concurrency,
        seq,
        poll_interval,
        reap_interval,
        shutdown_grace,
        max_clock_skew,
        metrics,
    )
    threads_ended = _threads_finished(THREAD_EXIT_GRACE)
    if not ended or not threads_ended:
        # A handler ignores its cancellation (an async one, or a sync one in its thread):
        # waiting for it would hang the shutdown. A sync handler's job was handed back
        # already; an async one's keeps its lease until it expires (decision 031).
        log.warning("exiting with handlers still running")
        logging.shutdown()
        os._exit(code)
    logging.shutdown()
    sys.exit(code)


def _setup_django() -> list[str]:
    """broker.django.setup_worker(): the queues of the Django tasks and their backends.
    Bad Django settings are a usage error (one line, exit 2)."""
    try:
        from django.core.exceptions import ImproperlyConfigured

        from broker.django import InvalidTask, setup_worker
    except ImportError as exc:
        raise click.UsageError(f"--django: {exc}") from exc
    try:
        return setup_worker()
    except (ImproperlyConfigured, ImportError, InvalidTask) as exc:
        # Settings that do not load, no pg-broker backend, a task Django refuses.
        raise click.UsageError(f"--django: {first_line(exc)}") from exc


def _threads_finished(timeout: float) -> bool:
    """Give handler threads that were told to stop a moment to return on their own."""
    deadline = time.monotonic() + timeout
    waited = [
        thread
        for thread in threading.enumerate()
        if thread is not threading.main_thread() and not thread.daemon
    ]
    for thread in waited:
        thread.join(max(0.0, deadline - time.monotonic()))
    # Daemon threads (a connection pool's workers, such as broker.django's) do not hold
    # the exit up, so they are not counted.
    return not any(thread.is_alive() for thread in waited)


def _run_one(
    queues: list[str],
    concurrency: int,
    seq: int,
    poll_interval: float,
    reap_interval: float,
    shutdown_grace: float,
    max_clock_skew: float | None,
    metrics: tuple[str, int] | None,
) -> tuple[int, bool]:
    """The exit code, and whether every task ended (runtime.LoopRun)."""
    from importlib.metadata import PackageNotFoundError, version

    from broker.db import database_url
    from broker.pruner import PrunerConfig
    from broker.task import registered
    from broker.worker.runtime import LoopRun, Worker

    if not queues:
        queues = sorted({t.queue for t in registered().values()}) or ["default"]
    try:
        pkg_version = version("pg-broker")
    except PackageNotFoundError:
        pkg_version = "0"
    try:
        settings = Settings.from_env()
        config = WorkerConfig(
            database_url=database_url(settings),
            queues=tuple(queues),
            concurrency=concurrency,
            seq=seq,
            settings=settings,
            poll_interval=poll_interval,
            shutdown_grace=shutdown_grace,
            max_clock_skew=max_clock_skew,
            reaper=reaper.ReaperConfig(interval=reap_interval),
            pruner=PrunerConfig.from_env(),
            version=pkg_version,
            supervisor_pid=_supervisor_pid(),
        )
        recorder, server = _metrics(metrics, config.supervisor_pid is not None)
    except BrokerError as exc:
        return _report(exc), True
    runtime = Worker(config, metrics=recorder)

    async def main() -> None:
        runtime.install_signal_handlers()
        await runtime.run()

    loop_run = LoopRun()
    try:
        loop_run.run(main())
    except Exception as exc:
        # Exit codes (a configuration or database error, the worker id in use, too much
        # clock skew) come from the one table in broker._exits, shared with `broker`.
        if exit_code(exc) is None:
            raise
        return _report(exc), loop_run.ended
    finally:
        if server is not None:
            server.stop()
    return EXIT_OK, loop_run.ended


def _metrics(
    address: tuple[str, int] | None, supervised: bool
) -> tuple[Metrics | None, MetricsServer | None]:
    """What records this process's metrics, and the server that serves them: none without
    an address; under a supervisor, records for the supervisor to serve (multiprocess mode,
    PROMETHEUS_MULTIPROC_DIR set by it). Raises ConfigError when the port cannot be bound."""
    from broker.task import registered

    if address is None:
        return None, None
    kinds = tuple(sorted(registered()))
    if supervised:
        return PrometheusMetrics(None, kinds), None
    registry = process_registry()
    recorder = PrometheusMetrics(registry, kinds)
    host, port = address
    return recorder, MetricsServer(registry, host, port)


def _report(exc: Exception) -> int:
    """One `error:` line for an error broker._exits has a code for, and that code."""
    code = exit_code(exc)
    assert code is not None, exc
    click.echo(error_line(first_line(exc)), err=True)
    return code


def _supervisor_pid() -> int | None:
    raw = os.environ.get("BROKER_SUPERVISOR_PID")
    return int(raw) if raw and raw.isdigit() else None
