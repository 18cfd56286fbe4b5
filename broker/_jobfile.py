"""Reads `broker enqueue --file`: JSON Lines of job specs, validated line by line, in batches."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from broker.lease import JobSpec

# The shapes the enqueue SQL function enforces, checked here first so that an error names
# the line and the field instead of a whole batch.
_NAME = r"^[A-Za-z0-9_.:-]+$"
_KEY = r"^[\x21-\x7e]+$"
_MAX_SECONDS = 366 * 86400

DEFAULT_BATCH_SIZE = 5000


class JobLine(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One line of a jobs file: the fields of JobSpec; give run_at or delay, not both."""

    kind: Annotated[str, Meta(min_length=1, max_length=200, pattern=_NAME)]
    args: dict[str, Any] = {}
    queue: Annotated[str, Meta(min_length=1, max_length=128, pattern=_NAME)] = "default"
    priority: Annotated[int, Meta(ge=-1_000_000, le=1_000_000)] = 0
    run_at: Annotated[datetime, Meta(tz=True)] | None = None
    delay: Annotated[float, Meta(ge=0, le=_MAX_SECONDS)] | None = None
    max_attempts: Annotated[int, Meta(ge=1, le=1000)] | None = None
    timeout: Annotated[float, Meta(gt=0, le=_MAX_SECONDS)] | None = None
    idempotency_key: Annotated[str, Meta(min_length=1, max_length=200, pattern=_KEY)] | None = None
    subject_key: Annotated[str, Meta(min_length=1, max_length=200)] | None = None
    tags: Annotated[
        list[Annotated[str, Meta(min_length=1, max_length=64)]], Meta(max_length=32)
    ] = []

    def __post_init__(self) -> None:
        if self.run_at is not None and self.delay is not None:
            raise ValueError("give run_at or delay, not both")
        if self.run_at is not None:
            # PostgreSQL refuses offsets beyond +-15:59, which ISO 8601 allows.
            try:
                self.run_at = self.run_at.astimezone(UTC)
            except OverflowError:
                raise ValueError("run_at is out of range") from None

    def spec(self) -> JobSpec:
        return JobSpec(
            self.kind,
            self.args,
            queue=self.queue,
            priority=self.priority,
            run_at=self.run_at,
            delay=self.delay,
            max_attempts=self.max_attempts,
            timeout=self.timeout,
            idempotency_key=self.idempotency_key,
            subject_key=self.subject_key,
            tags=self.tags,
        )


class JobFileError(ValueError):
    """A line of a jobs file is not a valid job spec."""

    def __init__(self, source: str, line: int, why: str) -> None:
        super().__init__(f"{source} line {line}: {why}")
        self.source = source
        self.line = line
        self.why = why


_decoder = msgspec.json.Decoder(JobLine)
_AT = re.compile(r"^(?P<why>.*) - at `\$\.?(?P<path>[^`]*)`$", re.DOTALL)


def _why(exc: msgspec.ValidationError) -> tuple[str | None, str]:
    """(the field at fault, if one is named, and what is wrong with it)."""
    found = _AT.match(str(exc))
    if found is None or not found["path"]:
        return None, str(exc)
    why = found["why"].replace(f"`str` matching regex {_NAME!r}", "letters, digits, _ . : - only")
    why = why.replace(f"`str` matching regex {_KEY!r}", "printable ASCII without spaces")
    return found["path"], why


class FieldError(ValueError):
    """A job field is invalid; `field` is its name (e.g. `priority`, `tags[0]`)."""

    def __init__(self, field: str | None, why: str) -> None:
        super().__init__(f"{field}: {why}" if field else why)
        self.field = field
        self.why = why


def spec_from(fields: dict[str, Any]) -> JobSpec:
    """A job spec from already-parsed fields (as on the command line), checked like a line.
    Raises FieldError saying which field is wrong."""
    try:
        return msgspec.convert(fields, JobLine).spec()
    except msgspec.ValidationError as exc:
        raise FieldError(*_why(exc)) from None


def parse_line(text: str | bytes, source: str, number: int) -> JobSpec:
    """The job spec on line `number`. Raises JobFileError saying why it is not one."""
    try:
        return _decoder.decode(text).spec()
    except msgspec.ValidationError as exc:
        raise JobFileError(source, number, str(FieldError(*_why(exc)))) from None
    except msgspec.DecodeError as exc:
        raise JobFileError(source, number, f"not valid JSON ({exc})") from None


def batches(
    lines: Iterable[str | bytes], source: str, size: int = DEFAULT_BATCH_SIZE
) -> Iterator[tuple[list[JobSpec], int]]:
    """Job specs from `lines` in lists of up to `size`, each with the line number it ends on.

    Blank lines are skipped. Raises JobFileError on the first line that is not a job spec,
    before yielding the batch it belongs to.
    """
    batch: list[JobSpec] = []
    number = 0
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        batch.append(parse_line(text, source, number))
        if len(batch) >= size:
            yield batch, number
            batch = []
    if batch:
        yield batch, number
