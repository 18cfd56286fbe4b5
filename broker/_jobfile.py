"""Reads `broker enqueue --file`: JSON Lines of job specs, validated line by line, in batches."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

import msgspec

from broker.errors import InvalidJobError
from broker.spec import KEY_PATTERN, NAME_PATTERN, TAG_PATTERN, JobSpec

DEFAULT_BATCH_SIZE = 5000


class JobFileError(ValueError):
    """A line of a jobs file is not a valid job spec."""

    def __init__(self, source: str, line: int, why: str) -> None:
        super().__init__(f"{source} line {line}: {why}")
        self.source = source
        self.line = line
        self.why = why


_decoder = msgspec.json.Decoder(JobSpec)
_AT = re.compile(r"^(?P<why>.*) - at `\$\.?(?P<path>[^`]*)`$", re.DOTALL)


def _why(exc: msgspec.ValidationError) -> tuple[str | None, str]:
    """(the field at fault, if one is named, and what is wrong with it)."""
    found = _AT.match(str(exc))
    if found is None or not found["path"]:
        return None, str(exc)
    why = found["why"]
    for pattern, words in (
        (NAME_PATTERN, "letters, digits, _ . : - only"),
        (KEY_PATTERN, "printable ASCII without spaces"),
        (TAG_PATTERN, "text without control characters"),
    ):
        why = why.replace(f"`str` matching regex {pattern!r}", words)
    return found["path"], why


class FieldError(ValueError):
    """A job field is invalid; `field` is its name (e.g. `priority`, `tags[0]`)."""

    def __init__(self, field: str | None, why: str) -> None:
        super().__init__(f"{field}: {why}" if field else why)
        self.field = field
        self.why = why


def spec_from(fields: dict[str, Any]) -> JobSpec:
    """A job spec from already-parsed fields (as on the command line), checked like a line.
    Raises FieldError saying which field is wrong (by its bounds), or InvalidJobError (the
    rules JobSpec.validate() adds)."""
    try:
        spec = msgspec.convert(fields, JobSpec)
    except msgspec.ValidationError as exc:
        raise FieldError(*_why(exc)) from None
    spec.validate()
    return spec


def parse_line(text: str | bytes, source: str, number: int) -> JobSpec:
    """The job spec on line `number`, validated. Raises JobFileError saying why it is not one."""
    try:
        spec = _decoder.decode(text)
        spec.validate()
    except msgspec.ValidationError as exc:
        raise JobFileError(source, number, str(FieldError(*_why(exc)))) from None
    except msgspec.DecodeError as exc:
        raise JobFileError(source, number, f"not valid JSON ({exc})") from None
    except RecursionError:
        raise JobFileError(source, number, "the JSON nests too deeply to decode") from None
    except InvalidJobError as exc:
        raise JobFileError(source, number, str(exc)) from None
    return spec


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
