"""`broker enqueue`: one job from options, or every line of a JSON Lines file in one
transaction."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import click

from broker._durations import Duration
from broker.cli._errors import CommandFailed, InputError, Interrupted, OneLineCommand
from broker.cli._options import echo_json, json_option, open_client
from broker.errors import BrokerError


def _parse_args_json(text: str | None, option: str = "--args") -> dict[str, Any]:
    import msgspec

    if text is None:
        return {}
    try:
        value = msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise InputError(f"{option} is not valid JSON: {exc}") from None
    except RecursionError:
        raise InputError(f"{option} nests too deeply to decode") from None
    if not isinstance(value, dict):
        raise InputError(f"{option} must be a JSON object, got {type(value).__name__}")
    return value


def _parse_run_at(text: str | None, option: str = "--run-at") -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise InputError(f"{option} is not an ISO 8601 time: {text!r}") from None
    if value.tzinfo is None:
        raise InputError(f"{option} needs a UTC offset, e.g. 2030-01-01T09:00:00Z")
    return value


def _parse_ids(text: str | None) -> list[int] | None:
    """`--depends-on 1,2,3` as job ids (their bounds are the spec's)."""
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InputError(f"--depends-on takes job ids separated by commas, not {text!r}") from None


@click.command(cls=OneLineCommand)
@click.argument("kind", required=False)
@click.option("--args", "args_json", metavar="JSON", help="Arguments: a JSON object.")
@click.option(
    "--queue",
    help="Default: the queue live workers declare for KIND, else `default`.",
)
@click.option("--priority", type=int, default=0, show_default=True, help="Higher runs first.")
# Bounds are the job spec's (broker.spec), checked when the options become a JobSpec.
@click.option("--delay", type=Duration(), help="Run after this long (e.g. 90s, 10m, 1h30m).")
@click.option("--run-at", metavar="ISO8601", help="Run at this time (with a UTC offset).")
@click.option("--max-attempts", type=int, help="Default: the broker's.")
@click.option("--timeout", type=Duration(), help="Per run (e.g. 30s, 5m).")
@click.option("--idempotency-key", help="At most one job per key.")
@click.option("--subject-key", help="Supersede queued jobs of this kind with this key.")
@click.option("--tag", "tags", multiple=True, help="A tag (repeatable).")
@click.option(
    "--depends-on", metavar="IDS", help="Wait until these jobs (ids, comma-separated) succeed."
)
@click.option("--group", help="Name a set of jobs (`broker groups show GROUP`).")
@click.option("--concurrency-key", help="At most one running job per queue and key.")
@click.option("--deadline", metavar="ISO8601", help="Cancel if not started by then.")
@click.option("--start-within", type=Duration(), help="Cancel if not started this soon (e.g. 10m).")
@click.option(
    "--meta",
    "meta_json",
    metavar="JSON",
    help="Carrier data for the run (a JSON object of strings), e.g. a traceparent.",
)
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
@json_option
def enqueue(
    kind: str | None,
    args_json: str | None,
    queue: str | None,
    priority: int,
    delay: float | None,
    run_at: str | None,
    max_attempts: int | None,
    timeout: float | None,
    idempotency_key: str | None,
    subject_key: str | None,
    tags: tuple[str, ...],
    depends_on: str | None,
    group: str | None,
    concurrency_key: str | None,
    deadline: str | None,
    start_within: float | None,
    meta_json: str | None,
    path: str | None,
    batch_size: int,
    as_json: bool,
) -> None:
    """Enqueue one job of KIND and print its id, or every job of a --file.

    \b
    A --file has one JSON object per line with the fields of a job:
      {"kind": "send_email", "args": {"to": "a@example.com"}, "queue": "emails"}
    (also priority, run_at, delay, max_attempts, timeout, idempotency_key,
    subject_key, tags, depends_on, group, concurrency_key, deadline,
    start_within, meta). Blank lines are skipped. The file is streamed in batches
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
            "--depends-on": depends_on,
            "--group": group,
            "--concurrency-key": concurrency_key,
            "--deadline": deadline,
            "--start-within": start_within,
            "--meta": meta_json,
        }
        extra = [name for name, value in given.items() if value is not None]
        extra += ["--tag"] if tags else []
        extra += ["--queue"] if queue is not None else []
        extra += ["--priority"] if priority != 0 else []
        if extra:
            raise InputError(f"--file takes each job's fields from the file, not {extra[0]}")
        _enqueue_file(path, batch_size, as_json)
        return
    if kind is None:
        raise InputError("give KIND, or --file (see `broker enqueue --help`)")
    if delay is not None and run_at is not None:
        raise InputError("give --delay or --run-at, not both")
    if deadline is not None and start_within is not None:
        raise InputError("give --deadline or --start-within, not both")
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
        "depends_on": _parse_ids(depends_on),
        "group": group,
        "concurrency_key": concurrency_key,
        "deadline": _parse_run_at(deadline, "--deadline"),
        "start_within": start_within,
        "meta": _parse_args_json(meta_json, "--meta") if meta_json is not None else None,
    }
    try:
        spec = spec_from({k: v for k, v in fields.items() if v is not None})
    except FieldError as exc:
        name = (exc.field or "").split("[")[0]
        option = {"kind": "KIND", "tags": "--tag"}.get(name, "--" + name.replace("_", "-"))
        raise InputError(f"{option}: {exc.why}" if exc.field else exc.why) from None
    from broker import routing

    with open_client() as client:
        # The CLI imports no task code: without --queue, live workers' declarations route.
        [done] = client.run(routing.enqueue_routed([spec], [queue is None]))
    for line in done.warnings:
        click.echo(f"warning: {line}", err=True)
    if as_json:
        echo_json({"id": done.id, "created": done.created})
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
        with open_client() as client, client.pool.connection() as conn, conn.transaction():
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
        echo_json(summary)
    else:
        repeats = f", {jobs - created:,} already existed" if jobs != created else ""
        click.echo(f"enqueued {jobs:,} jobs from {source} in {batch_count} batch(es){repeats}")


COMMANDS = (enqueue,)
