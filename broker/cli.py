"""The `broker` command line: one-line errors on stderr and non-zero exit codes."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from functools import wraps
from typing import TYPE_CHECKING, Any, TypeVar

import click

from broker.config import Settings
from broker.errors import BrokerError
from broker.spec import DEFAULT_QUEUE

if TYPE_CHECKING:
    from broker.client import Broker
    from broker.types import Job

F = TypeVar("F", bound=Callable[..., Any])


def one_line_errors(fn: F) -> F:
    """Turn BrokerError (and database errors) into `error: ...` on stderr and exit code 1."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import psycopg

        try:
            return fn(*args, **kwargs)
        except (BrokerError, psycopg.Error) as exc:
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            click.echo(f"error: {message}", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def settings_and_url() -> tuple[Settings, str]:
    """Settings from the environment and the database URL (embedded server if unset)."""
    from broker.db import database_url

    settings = Settings.from_env()
    return settings, database_url(settings)


@click.group()
@click.version_option(package_name="pg-broker")
def main() -> None:
    """pg-broker: a job broker that lives entirely in PostgreSQL."""
    # The pool logs every failed connection attempt; the CLI reports one line instead.
    logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)


@main.command()
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@one_line_errors
def migrate(revision: str) -> None:
    """Migrate the database (BROKER_DATABASE_URL, else the embedded one) to REVISION."""
    from broker.migrate import upgrade

    settings, url = settings_and_url()
    upgrade(url, settings.schema, revision)
    click.echo(f"migrated schema {settings.schema} to {revision}")


@main.command()
@click.option("--limit", default=1000, show_default=True, help="At most this many jobs.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@one_line_errors
def reap(limit: int, as_json: bool) -> None:
    """Return jobs whose lease expired (by the database clock) once, then exit."""
    from broker.client import Broker

    settings, url = settings_and_url()
    with Broker.connect(
        url, schema=settings.schema, min_size=1, max_size=1, connect_timeout=5
    ) as client:
        reaped = client.reap(limit)
    if as_json:
        click.echo(json.dumps([{"id": r.job_id, "state": r.state} for r in reaped]))
    else:
        click.echo(f"reaped {len(reaped)} expired lease(s)")
        for r in reaped:
            click.echo(f"  job {r.job_id} -> {r.state}")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=8000, show_default=True, type=int, help="TCP port.")
@click.option("--workers", default=1, show_default=True, type=int, help="Server processes.")
@click.option("--access-log/--no-access-log", default=True, show_default=True)
@click.option("--log-level", default="info", show_default=True)
@one_line_errors
def api(host: str, port: int, workers: int, access_log: bool, log_level: str) -> None:
    """Serve the REST API with uvicorn (tokens from BROKER_API_TOKENS)."""
    import os

    import uvicorn

    from api.config import ApiSettings

    ApiSettings.from_env()  # refuse to start without tokens before binding the port
    _, url = settings_and_url()
    # Server processes build the app from the environment, so they share the URL resolved
    # here (the embedded server is started once, by this process).
    os.environ["BROKER_DATABASE_URL"] = url
    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        access_log=access_log,
        log_level=log_level,
        server_header=False,
    )


@main.command()
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(["succeeded", "failed", "cancelled"]),
    help="Only these states (repeatable) [default: all three].",
)
@click.option(
    "--older-than",
    help="Override the retention, e.g. 36h or 7d [default: BROKER_RETENTION_<STATE> or 1d/14d/7d].",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@one_line_errors
def prune(states: tuple[str, ...], older_than: str | None, as_json: bool) -> None:
    """Delete finished jobs (and their events and logs) past their retention, once."""
    from broker.client import Broker
    from broker.pruner import PrunerConfig, parse_duration, prune_once

    config = PrunerConfig.from_env()
    retention = dict(config.retention)
    if older_than is not None:
        try:
            seconds = parse_duration(older_than, "--older-than")
        except BrokerError as exc:
            raise click.BadParameter(str(exc)) from None
        retention = dict.fromkeys(retention, seconds)
    if states:
        retention = {state: retention[state] for state in states}
    settings, url = settings_and_url()
    with Broker.connect(url, schema=settings.schema, max_size=1, connect_timeout=5) as client:
        pruned = prune_once(client, PrunerConfig(retention=retention))
    if pruned is None:
        raise BrokerError("another process is pruning right now; try again later")
    if as_json:
        click.echo(json.dumps(pruned))
    else:
        click.echo("pruned " + ", ".join(f"{n} {state}" for state, n in pruned.items()))


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface for the API.")
@click.option("--port", default=8000, show_default=True, type=int, help="TCP port for the API.")
@click.option(
    "--tasks", default="broker.examples.tasks", show_default=True, help="Task modules to run."
)
@one_line_errors
def dev(host: str, port: int, tasks: str) -> None:
    """Run a whole broker here: embedded PostgreSQL (unless BROKER_DATABASE_URL is set),
    migrations, the API and one worker, until Ctrl-C."""
    from broker.dev import DevConfig, run

    sys.exit(run(DevConfig(host=host, port=port, tasks=tasks), click.echo))


@main.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.pass_context
def worker(ctx: click.Context) -> None:
    """Run jobs: a worker process (or --processes N of them); see `broker worker --help`."""
    from broker.worker.command import worker as command

    command.main(ctx.args, prog_name="broker worker")


# --- operator commands: enqueue, jobs, stats, workers ----------------------------------
# Exit codes: 0 done; 1 the broker or the database refused or failed; 2 bad input. Usage
# errors on these commands are one line (`error: ...`), like every other error.

EXIT_CODES = """\b
Exit codes (enqueue, jobs, stats, workers):
  0  done
  1  refused or failed: job not found, cannot cancel/retry in its state,
     idempotency conflict, database unreachable or erroring
  2  bad input: unknown option or value, bad JSON, invalid job, bad --file line"""

main.epilog = EXIT_CODES

# broker.schema.JOB_STATES, without importing SQLAlchemy into every command (a test
# keeps the two equal).
STATES = ("queued", "running", "succeeded", "failed", "cancelled")


class InputError(click.UsageError):
    """Bad input to an operator command: `error: ...` on one line, exit code 2."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class CommandFailed(click.ClickException):
    """The broker refused or failed: `error: ...` on one line, exit code 1."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class Interrupted(CommandFailed):
    """Ctrl-C: exit code 130, as a shell reports SIGINT."""

    exit_code = 130


# `broker jobs` alone shows the group's help (and exits 2) rather than an error line;
# click < 8.2 has no such exception and exits 0 after the help.
_HELP_INSTEAD: tuple[type[click.UsageError], ...] = tuple(
    getattr(click.exceptions, name)
    for name in ("NoArgsIsHelpError",)
    if hasattr(click.exceptions, name)
)
_PASS_THROUGH: tuple[type[click.UsageError], ...] = (InputError, *_HELP_INSTEAD)


def _one_line_usage(exc: click.UsageError) -> InputError:
    where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
    return InputError(exc.format_message() + where)


class _OneLineCommand(click.Command):
    """A command whose usage errors are one `error:` line (exit code 2)."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except _PASS_THROUGH:
            raise
        except click.UsageError as exc:
            raise _one_line_usage(exc) from None


class _OneLineGroup(_OneLineCommand, click.Group):
    """A group whose usage errors (and its commands') are one `error:` line (exit code 2).

    make_context comes from _OneLineCommand, whose super() is click.Group's here."""

    command_class = _OneLineCommand

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except _PASS_THROUGH:
            raise
        except click.UsageError as exc:
            raise _one_line_usage(exc) from None


def operator_errors(fn: F) -> F:
    """Bad input (invalid job, bad file line) -> exit 2; every other broker or database
    error -> exit 1; both as one `error: ...` line on stderr."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import psycopg

        from broker._jobfile import JobFileError
        from broker.errors import InvalidJobError

        try:
            return fn(*args, **kwargs)
        except (InvalidJobError, JobFileError) as exc:
            raise InputError(str(exc)) from None
        except (BrokerError, psycopg.Error) as exc:
            text = str(exc).strip()
            raise CommandFailed(text.splitlines()[0] if text else type(exc).__name__) from None

    return wrapper  # type: ignore[return-value]


@contextmanager
def _client() -> Iterator[Broker]:
    """A one-connection client on BROKER_DATABASE_URL (else the embedded server)."""
    from broker.client import Broker

    settings, url = settings_and_url()
    with Broker.connect(
        url, schema=settings.schema, lease_ttl=settings.lease_ttl, max_size=1, connect_timeout=5
    ) as client:
        yield client


def _echo_json(value: Any) -> None:
    from broker._output import to_json

    click.echo(to_json(value))


def _parse_args_json(text: str | None) -> dict[str, Any]:
    import msgspec

    if text is None:
        return {}
    try:
        value = msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise InputError(f"--args is not valid JSON: {exc}") from None
    except RecursionError:
        raise InputError("--args nests too deeply to decode") from None
    if not isinstance(value, dict):
        raise InputError(f"--args must be a JSON object, got {type(value).__name__}")
    return value


def _parse_run_at(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise InputError(f"--run-at is not an ISO 8601 time: {text!r}") from None
    if value.tzinfo is None:
        raise InputError("--run-at needs a UTC offset, e.g. 2030-01-01T09:00:00Z")
    return value


@main.command(cls=_OneLineCommand)
@click.argument("kind", required=False)
@click.option("--args", "args_json", metavar="JSON", help="Arguments: a JSON object.")
@click.option("--queue", default=DEFAULT_QUEUE, show_default=True)
@click.option("--priority", type=int, default=0, show_default=True, help="Higher runs first.")
# Bounds are the job spec's (broker.spec), checked when the options become a JobSpec.
@click.option("--delay", type=float, metavar="SECONDS", help="Run after this long.")
@click.option("--run-at", metavar="ISO8601", help="Run at this time (with a UTC offset).")
@click.option("--max-attempts", type=int, help="Default: the broker's.")
@click.option("--timeout", type=float, metavar="SECONDS", help="Per run.")
@click.option("--idempotency-key", help="At most one job per key.")
@click.option("--subject-key", help="Supersede queued jobs of this kind with this key.")
@click.option("--tag", "tags", multiple=True, help="A tag (repeatable).")
@click.option(
    "--file",
    "path",
    type=click.Path(exists=True, dir_okay=False, allow_dash=True),
    help="Enqueue every line of this JSON Lines file (- = stdin) instead of KIND.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 5000),
    default=5000,
    show_default=True,
    help="Jobs sent per statement with --file.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@operator_errors
def enqueue(
    kind: str | None,
    args_json: str | None,
    queue: str,
    priority: int,
    delay: float | None,
    run_at: str | None,
    max_attempts: int | None,
    timeout: float | None,
    idempotency_key: str | None,
    subject_key: str | None,
    tags: tuple[str, ...],
    path: str | None,
    batch_size: int,
    as_json: bool,
) -> None:
    """Enqueue one job of KIND and print its id, or every job of a --file.

    \b
    A --file has one JSON object per line with the fields of a job:
      {"kind": "send_email", "args": {"to": "a@example.com"}, "queue": "emails"}
    (also priority, run_at, delay, max_attempts, timeout, idempotency_key,
    subject_key, tags). Blank lines are skipped. The file is streamed in batches
    (big plain batches use COPY) inside ONE transaction: a malformed line, or a
    batch the database refuses, enqueues nothing at all (exit code 2 or 1), and
    workers see the jobs only once the whole file is in.
    """
    if path is not None:
        given = {
            "KIND": kind,
            "--args": args_json,
            "--run-at": run_at,
            "--delay": delay,
            "--max-attempts": max_attempts,
            "--timeout": timeout,
            "--idempotency-key": idempotency_key,
            "--subject-key": subject_key,
        }
        extra = [name for name, value in given.items() if value is not None]
        extra += ["--tag"] if tags else []
        extra += ["--queue"] if queue != DEFAULT_QUEUE else []
        extra += ["--priority"] if priority != 0 else []
        if extra:
            raise InputError(f"--file takes each job's fields from the file, not {extra[0]}")
        _enqueue_file(path, batch_size, as_json)
        return
    if kind is None:
        raise InputError("give KIND, or --file (see `broker enqueue --help`)")
    if delay is not None and run_at is not None:
        raise InputError("give --delay or --run-at, not both")
    from broker._jobfile import FieldError, spec_from

    fields: dict[str, Any] = {
        "kind": kind,
        "args": _parse_args_json(args_json),
        "queue": queue,
        "priority": priority,
        "run_at": _parse_run_at(run_at),
        "delay": delay,
        "max_attempts": max_attempts,
        "timeout": timeout,
        "idempotency_key": idempotency_key,
        "subject_key": subject_key,
        "tags": list(tags),
    }
    try:
        spec = spec_from({k: v for k, v in fields.items() if v is not None})
    except FieldError as exc:
        name = (exc.field or "").split("[")[0]
        option = {"kind": "KIND", "tags": "--tag"}.get(name, "--" + name.replace("_", "-"))
        raise InputError(f"{option}: {exc.why}" if exc.field else exc.why) from None
    with _client() as client:
        [done] = client.enqueue_many([spec])
    if as_json:
        _echo_json({"id": done.id, "created": done.created})
    else:
        click.echo(done.id)
        if not done.created:
            click.echo(f"job {done.id} already existed (same idempotency key)", err=True)


def _enqueue_file(path: str, batch_size: int, as_json: bool) -> None:
    import os

    from broker._jobfile import JobFileError, batches
    from broker._output import Progress
    from broker.errors import DatabaseUnavailable, InvalidJobError

    source = "stdin" if path == "-" else path
    try:
        stream = click.open_file(path, "rb")
    except OSError as exc:
        raise InputError(f"cannot read {source}: {exc.strerror}") from None
    total = None if path == "-" else os.fstat(stream.fileno()).st_size
    progress = Progress(sys.stderr, total)
    bytes_read = 0

    def counted() -> Iterator[bytes]:
        nonlocal bytes_read
        for line in stream:
            bytes_read += len(line)
            yield line

    jobs = created = batch_count = 0
    first_id: int | None = None
    last_id: int | None = None
    first_line = 1
    try:
        with _client() as client, client.pool.connection() as conn, conn.transaction():
            for batch, last_line in batches(counted(), source, batch_size):
                try:
                    done = client.enqueue_many(batch, conn=conn)
                except DatabaseUnavailable:
                    raise
                except InvalidJobError as exc:
                    where = f"{source} lines {first_line}-{last_line}"
                    raise InputError(f"{where}: {exc}; nothing was enqueued") from None
                except BrokerError as exc:
                    where = f"{source} lines {first_line}-{last_line}"
                    raise CommandFailed(f"{where}: {exc}; nothing was enqueued") from None
                first_line = last_line + 1
                jobs += len(done)
                created += sum(1 for d in done if d.created)
                batch_count += 1
                first_id = done[0].id if first_id is None else first_id
                last_id = done[-1].id
                progress.update(jobs, bytes_read)
    except JobFileError as exc:
        raise InputError(f"{exc}; nothing was enqueued") from None
    except KeyboardInterrupt:
        raise Interrupted("interrupted; nothing was enqueued") from None
    finally:
        progress.close()
        stream.close()
    summary = {
        "source": source,
        "jobs": jobs,
        "created": created,
        "existing": jobs - created,
        "batches": batch_count,
        "first_id": first_id,
        "last_id": last_id,
    }
    if as_json:
        _echo_json(summary)
    else:
        repeats = f", {jobs - created:,} already existed" if jobs != created else ""
        click.echo(f"enqueued {jobs:,} jobs from {source} in {batch_count} batch(es){repeats}")


@main.group(cls=_OneLineGroup)
def jobs() -> None:
    """List, show, cancel and retry jobs."""


@jobs.command("ls")
@click.option("--queue", help="Only this queue.")
@click.option("--state", type=click.Choice(STATES), help="Only this state.")
@click.option("--kind", help="Only this kind.")
@click.option("--tag", help="Only jobs with this tag.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--before", type=click.IntRange(min=1), metavar="ID", help="Only ids below ID.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@operator_errors
def jobs_ls(
    queue: str | None,
    state: str | None,
    kind: str | None,
    tag: str | None,
    limit: int,
    before: int | None,
    as_json: bool,
) -> None:
    """Jobs newest first. When more match, the next page is `--before` the last id shown."""
    from broker import inspection as inspect
    from broker._output import clip, job_json, table, when

    filters = inspect.JobFilter(queue=queue, state=state, kind=kind, tag=tag)
    found: list[Job] = []
    cursor = before
    with _client() as client:
        # One row past the limit tells whether there is a next page.
        while len(found) <= limit:
            page_size = min(inspect.MAX_PAGE_SIZE, limit + 1 - len(found))
            page = client.run(inspect.list_jobs(filters, page_size, cursor))
            found.extend(page)
            if len(page) < page_size:
                break
            cursor = page[-1].id
    shown = found[:limit]
    next_before = shown[-1].id if len(found) > limit else None
    if as_json:
        _echo_json({"jobs": [job_json(j) for j in shown], "next_before": next_before})
        return
    if not shown:
        click.echo("no jobs")
        return
    rows = [
        [
            str(j.id),
            j.queue,
            j.kind,
            j.state,
            f"{j.attempts}/{j.max_attempts}",
            str(j.priority),
            when(j.created_at),
            when(j.run_at),
            clip(j.last_error, 40),
        ]
        for j in shown
    ]
    headers = ["ID", "QUEUE", "KIND", "STATE", "ATTEMPTS", "PRIORITY", "CREATED", "RUN AT"]
    click.echo(table([*headers, "LAST ERROR"], rows, right=["ID", "ATTEMPTS", "PRIORITY"]))
    if next_before is not None:
        click.echo(f"more: broker jobs ls --before {next_before}", err=True)


@jobs.command("show")
@click.argument("job_id", metavar="ID", type=click.IntRange(min=1))
@click.option("--logs", "with_logs", is_flag=True, help="Also the lines its handler logged.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@operator_errors
def jobs_show(job_id: int, with_logs: bool, as_json: bool) -> None:
    """One job, its events and (with --logs) its log lines."""
    from broker._output import (
        clip,
        duration,
        event_json,
        fields,
        job_json,
        log_json,
        table,
        to_json,
        when,
    )
    from broker.types import JobEvent, LogLine

    with _client() as client:
        job = client.get_job(job_id)
        events: list[JobEvent] = []
        while page := client.events(job_id, events[-1].id if events else 0):
            events.extend(page)
        lines: list[LogLine] = []
        while with_logs and (more := client.logs(job_id, lines[-1].id if lines else 0)):
            lines.extend(more)
    if as_json:
        _echo_json(
            {
                "job": job_json(job),
                "events": [event_json(e) for e in events],
                "logs": [log_json(line) for line in lines] if with_logs else None,
            }
        )
        return
    timeout = job.timeout.total_seconds() if job.timeout is not None else None
    click.echo(
        fields(
            [
                ("id", str(job.id)),
                ("kind", job.kind),
                ("queue", job.queue),
                ("state", job.state),
                ("args", to_json(job.args)),
                ("priority", str(job.priority)),
                ("attempts", f"{job.attempts} of {job.max_attempts}"),
                ("run at", when(job.run_at)),
                ("created", when(job.created_at)),
                ("started", when(job.started_at)),
                ("finished", when(job.finished_at)),
                ("timeout", duration(timeout)),
                ("lease epoch", str(job.lease_epoch)),
                ("lease expires", when(job.lease_expires_at)),
                ("worker", job.worker_id or "-"),
                ("cancel requested", when(job.cancel_requested_at)),
                ("idempotency key", job.idempotency_key or "-"),
                ("subject key", job.subject_key or "-"),
                ("tags", ", ".join(job.tags) or "-"),
                ("result", "-" if job.result is None else clip(to_json(job.result), 200)),
                ("last error", clip(job.last_error, 200)),
            ]
        )
    )
    click.echo("\nevents:")
    rows = [
        [
            when(e.at),
            e.event,
            "-" if e.epoch is None else str(e.epoch),
            e.worker_id or "-",
            "-" if e.detail is None else clip(to_json(e.detail), 60),
        ]
        for e in events
    ]
    click.echo(table(["AT", "EVENT", "EPOCH", "WORKER", "DETAIL"], rows, right=["EPOCH"]))
    if with_logs:
        click.echo("\nlogs:")
        for line in lines:
            click.echo(f"{when(line.at)} [{line.epoch}] {line.line}")
        if not lines:
            click.echo("(none)")


def _state_change(job_id: int, state: str, as_json: bool) -> None:
    if as_json:
        _echo_json({"id": job_id, "state": state})
    elif state == "running":
        click.echo(f"job {job_id}: cancel requested; its worker stops it and marks it cancelled")
    else:
        click.echo(f"job {job_id}: {state}")


@jobs.command("cancel")
@click.argument("job_id", metavar="ID", type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@operator_errors
def jobs_cancel(job_id: int, as_json: bool) -> None:
    """Cancel a queued job now, or ask the worker running it to stop (state stays running
    until the worker acknowledges). A finished job cannot be cancelled (exit code 1)."""
    with _client() as client:
        state = client.cancel(job_id)
    _state_change(job_id, state, as_json)


@jobs.command("retry")
@click.argument("job_id", metavar="ID", type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@operator_errors
def jobs_retry(job_id: int, as_json: bool) -> None:
    """Queue a failed or cancelled job again, runnable now (exit code 1 in other states)."""
    with _client() as client:
        state = client.retry(job_id)
    _state_change(job_id, state, as_json)


@main.command(cls=_OneLineCommand)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@operator_errors
def stats(as_json: bool) -> None:
    """Jobs per queue and state, how long the oldest runnable job has waited, which queues
    are paused, and how many workers are alive."""
    from broker import _cli_views as views
    from broker import inspection as inspect
    from broker._output import duration, queue_json, table, when

    with _client() as client:
        queues = client.run(inspect.queues())
        summary = client.run(views.summary())
    counts = ["queued", "available", "scheduled", "running", "succeeded", "failed", "cancelled"]
    totals: dict[str, Any] = {name: sum(getattr(q, name) for q in queues) for name in counts}
    waits = [q.oldest_available_age_seconds for q in queues if q.available]
    totals["oldest_available_age_seconds"] = max(waits, default=0.0)
    if as_json:
        _echo_json(
            {
                "queues": [queue_json(q) for q in queues],
                "totals": totals,
                "workers_alive": summary.workers_alive,
                "db_time": summary.db_time,
            }
        )
        return
    rows = [
        [
            q.queue,
            *(str(getattr(q, name)) for name in counts),
            duration(q.oldest_available_age_seconds) if q.available else "-",
            "paused" if q.paused else "",
        ]
        for q in queues
    ]
    total_row = [
        "(all)",
        *(str(totals[name]) for name in counts),
        duration(totals["oldest_available_age_seconds"]) if waits else "-",
        "",
    ]
    headers = ["QUEUE", *(name.upper() for name in counts), "OLDEST WAIT", "PAUSED"]
    right = headers[1:-1]
    click.echo(table(headers, [*rows, total_row], right=right))
    click.echo(f"\nworkers alive: {summary.workers_alive}   database time: {when(summary.db_time)}")


@main.command("workers", cls=_OneLineCommand)
@click.option("--alive", "alive_only", is_flag=True, help="Only workers that are alive.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@operator_errors
def workers_command(alive_only: bool, as_json: bool) -> None:
    """The worker registry, with each worker's status as the broker.worker_status view
    gives it (alive: a heartbeat within the last 30 s, by the database clock; stopped:
    shut down cleanly; gone: no heartbeat since), when it was last seen, and its clock
    skew against the database (`!` past BROKER_CLOCK_SKEW_TOLERANCE)."""
    from broker import inspection as inspect
    from broker._output import duration, table, worker_json

    tolerance = Settings.from_env().clock_skew_tolerance
    with _client() as client:
        found = client.run(inspect.workers())
    if alive_only:
        found = [w for w in found if w.status == "alive"]
    if as_json:
        _echo_json(
            {
                "workers": [worker_json(w, tolerance) for w in found],
                "clock_skew_tolerance_seconds": tolerance,
            }
        )
        return
    if not found:
        click.echo("no workers")
        return

    def skew(w: inspect.WorkerInfo) -> str:
        if w.clock_skew_seconds is None:
            return "-"
        flag = "!" if abs(w.clock_skew_seconds) > tolerance else ""
        return f"{w.clock_skew_seconds:+.3f}s{flag}"

    rows = [
        [
            w.worker_id,
            w.hostname,
            str(w.pid),
            ",".join(w.queues),
            str(w.concurrency),
            str(w.running_jobs),
            w.status,
            duration(w.last_seen_age_seconds) + " ago",
            skew(w),
        ]
        for w in found
    ]
    headers = ["WORKER", "HOST", "PID", "QUEUES", "CONCURRENCY", "RUNNING", "STATUS"]
    right = ["PID", "CONCURRENCY", "RUNNING", "LAST SEEN", "SKEW"]
    click.echo(table([*headers, "LAST SEEN", "SKEW"], rows, right=right))


if __name__ == "__main__":
    main()
