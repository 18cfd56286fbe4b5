"""The enqueue contract: every field of a job spec, its type, bounds and normalisation, once.

A job enters through five doors: `Broker.enqueue` / `enqueue_many` (Python), `POST
/v1/jobs` (its body is a JobSpec), `broker enqueue` (its options are converted to one),
`broker enqueue --file` (each line is decoded as one) and SQL `broker.enqueue(...)`. The
first four use this module; the SQL function `_parse_specs` (migration 0006, current text
in broker/sql/schema.sql) enforces the same bounds, and tests/integration/test_five_doors.py
drives one table of edge cases through all five doors and expects one verdict per case.

Every bound is a constant here. The msgspec annotations of JobSpec carry them to the
decoders (REST body, jobs file, CLI options) and to the OpenAPI schema; `JobSpec.validate()`
applies them to specs built in Python, which msgspec does not check (a unit test keeps the
two in step). Beyond the per-field bounds, validate() checks what annotations cannot say:
run_at or delay (not both), deadline or start_within (not both), the range of run_at and
deadline, that args is JSON the database can store, and meta's shape and size
(check_meta: string leaves, so its size is exactly the bytes PostgreSQL prints; migration
0012 holds the same rules in SQL). That each depends_on id names an
existing job only the database can say: enqueue_many() refuses an unknown one (PB002).

Text PostgreSQL cannot store is refused in every string that reaches it (args keys and
values, names, tags, keys, results, errors, log lines): NUL (U+0000) and lone surrogates.
JSON values nest at most MAX_JSON_DEPTH deep, far inside what Python's decoder reads back, so
a worker can always decode what was let in. A stored value nested deeper than MAX_READ_DEPTH
(only a hand-written INSERT can store one) reads as UnreadableJSON, on every Python: the
decoder's own limit moves with the version (3.11 stops near 1,000 levels, 3.13 near 10,000).

This module imports nothing heavy (no SQLAlchemy, no psycopg): the CLI and broker.schema
import it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from broker.errors import InvalidJobError

# --- the bounds ----------------------------------------------------------------------------

DEFAULT_QUEUE = "default"
DEFAULT_MAX_ATTEMPTS = 20
KIND_MAX_LENGTH = 200
QUEUE_MAX_LENGTH = 128
KEY_MAX_LENGTH = 200
SCOPE_MAX_LENGTH = 64
TAG_MAX_LENGTH = 64
MAX_TAGS = 32
PRIORITY_MIN, PRIORITY_MAX = -(2**31), 2**31 - 1  # the integer column's own range
# A thousand attempts at the one-hour backoff cap is six weeks of retrying.
MAX_ATTEMPTS_LIMIT = 1000
# Longest delay or timeout: beyond it PostgreSQL intervals overflow or wrap.
MAX_DURATION_YEARS = 100
MAX_DURATION_SECONDS = int(MAX_DURATION_YEARS * 365.25 * 86400)  # 3,155,760,000
# Deepest nesting of a JSON value (args, result), counting the value itself: args `{}` is 1.
MAX_JSON_DEPTH = 64
MAX_READ_DEPTH = 512
# A day of margin at both ends of the calendar: PostgreSQL returns a timestamp in the
# session's time zone, and 9999-12-31T23:00Z is already year 10000 east of UTC, which
# Python cannot read back.
RUN_AT_MIN = datetime(1, 1, 2, tzinfo=UTC)
RUN_AT_MAX = datetime(9999, 12, 30, 23, 59, 59, 999999, tzinfo=UTC)
# Dependencies: a job waits for at most this many others, named by id. Ids are bigints, but
# capped at 2**53 like everywhere in the API (JSON Schema bounds are floats).
MAX_DEPENDENCIES = 100
JOB_ID_MAX = 2**53
# A group is named like a queue (it appears in URLs: GET /v1/groups/{group}).
GROUP_MAX_LENGTH = 128
# meta is carrier data (trace context: broker.tracing), a tree of objects with text leaves:
# at most MAX_META_DEPTH deep counting meta itself (`{}` is 1), and at most MAX_META_BYTES
# of UTF-8 as PostgreSQL prints it (jsonb text, `{"k": "v"}`), which Python can compute
# exactly because the leaves are strings (docs/decisions/021-tracing.md).
MAX_META_DEPTH = 8
MAX_META_BYTES = 8192

# Patterns as msgspec and JSON Schema read them (searched, so anchored). The names are the
# table's CHECK constraints; keys are printable ASCII without spaces, so two keys that look
# the same are the same; tags are free text without control characters.
NAME_PATTERN = r"^[A-Za-z0-9_.:-]+$"
KEY_PATTERN = r"^[\x21-\x7e]+$"
TAG_PATTERN = r"^[^\x00-\x1f\x7f]+$"
# A key in a scope is stored as scope + SCOPE_SEPARATOR + key, so a scope holds no ':'.
SCOPE_PATTERN = r"^[A-Za-z0-9_.-]+$"
SCOPE_SEPARATOR = ":"

KIND_RULE = f"kind must be 1-{KIND_MAX_LENGTH} characters of letters, digits, _ . : -"
QUEUE_RULE = f"queue must be 1-{QUEUE_MAX_LENGTH} characters of letters, digits, _ . : -"
TAG_RULE = f"each tag must be 1-{TAG_MAX_LENGTH} characters without control characters"
GROUP_RULE = f"group must be 1-{GROUP_MAX_LENGTH} characters of letters, digits, _ . : -"
META_RULE = "meta must be a JSON object whose values are strings or objects"
META_DEPTH_RULE = f"meta must nest at most {MAX_META_DEPTH} deep"
META_SIZE_RULE = f"meta must be at most {MAX_META_BYTES} bytes as JSON"
DEPENDS_ON_RULE = (
    f"depends_on must be at most {MAX_DEPENDENCIES} job ids (integers from 1 to {JOB_ID_MAX})"
)


def _key_rule(name: str) -> str:
    return f"{name} must be 1-{KEY_MAX_LENGTH} printable ASCII characters without spaces"


# What each CHECK constraint on broker.jobs means, in the words a caller needs
# (broker.errors.translate shows these instead of PostgreSQL's message).
CONSTRAINT_MESSAGES = {
    "jobs_kind_check": KIND_RULE,
    "jobs_queue_check": QUEUE_RULE,
    "jobs_args_check": "args must be a JSON object",
    "jobs_max_attempts_check": "max_attempts must be at least 1",
    "jobs_timeout_check": "timeout must be positive",
    "jobs_state_check": ("state must be waiting, queued, running, succeeded, failed or cancelled"),
    "jobs_group_check": GROUP_RULE,
    "jobs_concurrency_key_check": _key_rule("concurrency_key"),
    "jobs_meta_check": "meta must be a JSON object",
}

# --- the types -----------------------------------------------------------------------------

Kind = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=KIND_MAX_LENGTH,
        pattern=NAME_PATTERN,
        description="The task name.",
    ),
]
QueueName = Annotated[str, Meta(min_length=1, max_length=QUEUE_MAX_LENGTH, pattern=NAME_PATTERN)]
Args = Annotated[
    Mapping[str, Any],
    Meta(
        description=(
            f"A JSON object, nested at most {MAX_JSON_DEPTH} deep, without NUL (\\u0000) "
            "or lone surrogates in any key or string."
        )
    ),
]
JobMeta = Annotated[
    Mapping[str, Any],
    Meta(
        description=(
            "Carrier data for the job's run, such as W3C trace context (`traceparent`, "
            "`tracestate`): a JSON object whose values are strings or objects of the same "
            f"kind, nested at most {MAX_META_DEPTH} deep and at most {MAX_META_BYTES} bytes "
            "as JSON, without NUL or lone surrogates. Not part of an idempotency key's "
            "request."
        )
    ),
]
Priority = Annotated[int, Meta(ge=PRIORITY_MIN, le=PRIORITY_MAX, description="Higher runs first.")]
RunAt = Annotated[
    datetime,
    Meta(
        tz=True,
        description=(
            "Earliest start, with a UTC offset, between "
            f"{RUN_AT_MIN.isoformat()} and {RUN_AT_MAX.isoformat()}."
        ),
    ),
]
Delay = Annotated[
    float,
    Meta(
        ge=0,
        le=MAX_DURATION_SECONDS,
        description="Seconds to wait before the job may start, on the database clock.",
    ),
]
Timeout = Annotated[
    float, Meta(gt=0, le=MAX_DURATION_SECONDS, description="Seconds one attempt may run.")
]
MaxAttempts = Annotated[int, Meta(ge=1, le=MAX_ATTEMPTS_LIMIT)]
Key = Annotated[str, Meta(min_length=1, max_length=KEY_MAX_LENGTH, pattern=KEY_PATTERN)]
Tag = Annotated[str, Meta(min_length=1, max_length=TAG_MAX_LENGTH, pattern=TAG_PATTERN)]
Tags = Annotated[Sequence[Tag], Meta(max_length=MAX_TAGS)]
GroupName = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=GROUP_MAX_LENGTH,
        pattern=NAME_PATTERN,
        description="Names a set of jobs (GET /v1/groups/{group} counts them per state).",
    ),
]
JobId = Annotated[int, Meta(ge=1, le=JOB_ID_MAX)]
DependsOn = Annotated[
    Sequence[JobId],
    Meta(
        max_length=MAX_DEPENDENCIES,
        description=(
            "Ids of existing jobs that must all succeed before this one may run; it waits "
            "(state `waiting`) until then, and is cancelled if one fails or is cancelled."
        ),
    ),
]
Deadline = Annotated[
    datetime,
    Meta(
        tz=True,
        description=(
            "Latest start, with a UTC offset (same range as run_at): a job not started by "
            "then is cancelled (event `expired`)."
        ),
    ),
]
StartWithin = Annotated[
    float,
    Meta(
        ge=0,
        le=MAX_DURATION_SECONDS,
        description="Seconds from now (database clock) the job must start within: a deadline.",
    ),
]


class JobSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A job to enqueue. Give run_at or delay, not both, and deadline or start_within, not
    both; durations are seconds.

    Built in Python, a spec is checked when it is enqueued (`validate()`); decoded from
    JSON, msgspec checks the same bounds first. A `timedelta` is accepted for delay and
    timeout in Python.
    """

    kind: Kind
    args: Args = {}
    queue: QueueName = DEFAULT_QUEUE
    priority: Priority = 0
    run_at: RunAt | None = None
    delay: Delay | None = None
    max_attempts: MaxAttempts | None = None
    timeout: Timeout | None = None
    idempotency_key: Key | None = None
    subject_key: Key | None = None
    tags: Tags = []
    depends_on: DependsOn = []
    group: GroupName | None = None
    concurrency_key: Key | None = None
    deadline: Deadline | None = None
    start_within: StartWithin | None = None
    meta: JobMeta = {}

    def validate(self) -> None:
        """Raise InvalidJobError, naming the field, for anything outside the contract."""
        check(self)

    def to_json(self) -> dict[str, Any]:
        """The spec as the enqueue_many() SQL function reads it (None fields left out).
        Raises InvalidJobError."""
        check(self)
        return wire(self)


# --- checks --------------------------------------------------------------------------------

_NAME = re.compile(r"[A-Za-z0-9_.:-]+")
_KEY = re.compile(r"[\x21-\x7e]+")
_TAG = re.compile(r"[^\x00-\x1f\x7f]+")
_SCOPE = re.compile(r"[A-Za-z0-9_.-]+")
_NUL_ESCAPE = b"\\u0000"


def plain(spec: JobSpec) -> bool:
    """Whether `spec` needs none of enqueue_many()'s own rules: no idempotency key (a
    replay check), no subject key (superseding) and no dependencies (locked and checked
    there). Plain specs may take the lean paths (one job: job_enqueue_one; big batches:
    COPY), which apply check() and the table's constraints and nothing else."""
    return spec.idempotency_key is None and spec.subject_key is None and not spec.depends_on


def check(spec: JobSpec) -> bytes:
    """Validate `spec` and return its args encoded as JSON (ready for COPY).
    Raises InvalidJobError naming the field at fault.

    It runs for every spec of every batch (10,000 per COPY call), so the common case takes
    the short way: exact types first, the general checks only when those fail."""
    _name(spec.kind, KIND_MAX_LENGTH, KIND_RULE)
    if spec.queue != DEFAULT_QUEUE:
        _name(spec.queue, QUEUE_MAX_LENGTH, QUEUE_RULE)
    if type(spec.args) is not dict and not isinstance(spec.args, Mapping):
        raise InvalidJobError(f"args must be a mapping, got {type(spec.args).__name__}")
    args = encode_json(spec.args, "args")
    if not (type(spec.priority) is int and PRIORITY_MIN <= spec.priority <= PRIORITY_MAX):
        _integer(spec.priority, "priority", PRIORITY_MIN, PRIORITY_MAX)
    if spec.run_at is not None:
        utc(spec.run_at)
        if spec.delay is not None:
            raise InvalidJobError("give run_at or delay, not both")
    if spec.delay is not None and seconds(spec.delay, "delay") < 0:  # type: ignore[operator]
        raise InvalidJobError("delay must not be negative")
    if spec.max_attempts is not None:
        if isinstance(spec.max_attempts, int) and spec.max_attempts < 1:
            raise InvalidJobError(CONSTRAINT_MESSAGES["jobs_max_attempts_check"])
        _integer(spec.max_attempts, "max_attempts", 1, MAX_ATTEMPTS_LIMIT)
    if spec.timeout is not None:
        # A timeout of zero or less is refused by the jobs_timeout_check constraint, which
        # every path in meets (COPY too); here only what the interval column cannot hold.
        seconds(spec.timeout, "timeout")
    if spec.idempotency_key is not None:
        _key(spec.idempotency_key, "idempotency_key")
    if spec.subject_key is not None:
        _key(spec.subject_key, "subject_key")
    if spec.tags:
        _tags(spec.tags)
    if spec.depends_on:
        _depends_on(spec.depends_on)
    if spec.group is not None:
        _name(spec.group, GROUP_MAX_LENGTH, GROUP_RULE)
    if spec.concurrency_key is not None:
        _key(spec.concurrency_key, "concurrency_key")
    if spec.deadline is not None:
        utc(spec.deadline, "deadline")
        if spec.start_within is not None:
            raise InvalidJobError("give deadline or start_within, not both")
    if spec.start_within is not None and seconds(spec.start_within, "start_within") < 0:  # type: ignore[operator]
        raise InvalidJobError("start_within must not be negative")
    if spec.meta:
        check_meta(spec.meta)
    elif type(spec.meta) is not dict and not isinstance(spec.meta, Mapping):
        raise InvalidJobError(META_RULE)
    return args


def check_meta(meta: object) -> int:
    """Raise InvalidJobError unless `meta` is carrier data the contract allows (see
    MAX_META_DEPTH, MAX_META_BYTES); return its size in bytes as PostgreSQL prints it.
    _parse_specs applies the same rules in SQL."""
    if not isinstance(meta, Mapping):
        raise InvalidJobError(META_RULE)
    size = 0
    # (object, its depth): iterative, so no meta is too deep to be refused.
    stack: list[tuple[Mapping[Any, Any], int]] = [(meta, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_META_DEPTH:
            raise InvalidJobError(META_DEPTH_RULE)
        # `{` `}`, and `, ` between members: as jsonb prints an object.
        size += 2 + 2 * max(len(node) - 1, 0)
        for key, value in node.items():
            if not isinstance(key, str):
                raise InvalidJobError("meta keys must be strings")
            size += _json_text_size(key, "meta") + 2  # `: `
            if isinstance(value, str):
                size += _json_text_size(value, "meta")
            elif isinstance(value, Mapping):
                stack.append((value, depth + 1))
            else:
                raise InvalidJobError(META_RULE)
    if size > MAX_META_BYTES:
        raise InvalidJobError(META_SIZE_RULE)
    return size


# What jsonb's output escapes in a string, and how long each escape is.
_JSON_ESCAPES = {"\\": 2, '"': 2, "\b": 2, "\f": 2, "\n": 2, "\r": 2, "\t": 2}
_CONTROL = re.compile(r'[\x00-\x1f\\"]')


def _json_text_size(text: str, what: str) -> int:
    """Bytes of `text` as a JSON string in jsonb's output: quoted, UTF-8, with \\ \" and
    control characters escaped (\\n and the like, else \\u00XX). Raises InvalidJobError
    for text PostgreSQL cannot store."""
    check_text(text, what)
    size = len(text) if text.isascii() else len(text.encode())
    for char in _CONTROL.findall(text):
        size += _JSON_ESCAPES.get(char, 6) - 1
    return size + 2


def check_scope(scope: str) -> None:
    """Raise InvalidJobError unless `scope` can namespace idempotency keys."""
    if not (isinstance(scope, str) and len(scope) <= SCOPE_MAX_LENGTH and _SCOPE.fullmatch(scope)):
        raise InvalidJobError(
            f"idempotency_scope must be 1-{SCOPE_MAX_LENGTH} letters, digits, _ . -"
        )


def check_group(group: str) -> None:
    """Raise InvalidJobError unless `group` is a name a job's group can have."""
    _name(group, GROUP_MAX_LENGTH, GROUP_RULE)


# Names already accepted, by length bound: a batch repeats a few kinds and queues
# thousands of times, and the match is most of check()'s cost for a plain spec.
_ACCEPTED: dict[int, set[str]] = {}
_ACCEPTED_MAX = 4096


def _name(value: object, longest: int, rule: str) -> None:
    accepted = _ACCEPTED.setdefault(longest, set())
    if type(value) is str and value in accepted:
        return
    if not (isinstance(value, str) and len(value) <= longest and _NAME.fullmatch(value)):
        raise InvalidJobError(rule)
    if len(accepted) >= _ACCEPTED_MAX:
        accepted.clear()
    accepted.add(value)


def _key(value: object, name: str) -> None:
    if not (isinstance(value, str) and len(value) <= KEY_MAX_LENGTH and _KEY.fullmatch(value)):
        raise InvalidJobError(_key_rule(name))


def _integer(value: object, name: str, lowest: int, highest: int) -> None:
    # bool is an int to Python but not to JSON or PostgreSQL; binary COPY would wrap
    # what an integer column cannot hold.
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidJobError(f"{name} must be an integer")
    if not lowest <= value <= highest:
        raise InvalidJobError(f"{name} must be between {lowest} and {highest}")


def _tags(tags: object) -> None:
    if isinstance(tags, str):
        raise InvalidJobError("tags must be a list of strings, not a string")
    if not isinstance(tags, Sequence) or not all(isinstance(t, str) for t in tags):
        raise InvalidJobError("tags must be a list of strings")
    if len(tags) > MAX_TAGS:
        raise InvalidJobError(f"tags must be at most {MAX_TAGS}")
    for tag in tags:
        if len(tag) > TAG_MAX_LENGTH or not _TAG.fullmatch(tag):
            raise InvalidJobError(TAG_RULE)
        check_text(tag, "tags")


def _depends_on(ids: object) -> None:
    if isinstance(ids, str | bytes) or not isinstance(ids, Sequence):
        raise InvalidJobError(DEPENDS_ON_RULE)
    if len(ids) > MAX_DEPENDENCIES:
        raise InvalidJobError(DEPENDS_ON_RULE)
    for job_id in ids:
        if isinstance(job_id, bool) or not isinstance(job_id, int) or not 1 <= job_id <= JOB_ID_MAX:
            raise InvalidJobError(DEPENDS_ON_RULE)


def utc(run_at: datetime, name: str = "run_at") -> datetime:
    """`run_at` (or the time field `name`) as UTC (PostgreSQL refuses offsets beyond
    +-15:59, which Python allows). Raises InvalidJobError for a naive time or one outside
    RUN_AT_MIN..RUN_AT_MAX."""
    if not isinstance(run_at, datetime):
        raise InvalidJobError(f"{name} must be a datetime")
    if run_at.tzinfo is None or run_at.utcoffset() is None:
        raise InvalidJobError(f"{name} must be timezone-aware")
    try:
        instant = run_at.astimezone(UTC)
    except OverflowError:  # the UTC instant would be before year 1 or after 9999
        raise InvalidJobError(f"{name} is out of range") from None
    if not RUN_AT_MIN <= instant <= RUN_AT_MAX:
        raise InvalidJobError(
            f"{name} must be between {RUN_AT_MIN.isoformat()} and {RUN_AT_MAX.isoformat()}"
        )
    return instant


def seconds(value: float | timedelta | None, name: str) -> float | None:
    """A duration in seconds (from seconds or a timedelta). Raises InvalidJobError for
    anything but a finite number of at most MAX_DURATION_SECONDS."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | timedelta):
        raise InvalidJobError(f"{name} must be a number of seconds")
    total = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if not math.isfinite(total) or abs(total) > MAX_DURATION_SECONDS:
        raise InvalidJobError(
            f"{name} must be a finite number of seconds, at most {MAX_DURATION_YEARS} years"
        )
    return total


def wire(spec: JobSpec) -> dict[str, Any]:
    """The normalised spec as JSON fields (run_at in UTC, durations in seconds, tags a
    list, None fields left out). The spec must have passed check()."""
    fields: dict[str, Any] = {
        "kind": spec.kind,
        "args": spec.args,
        "queue": spec.queue,
        "priority": spec.priority,
        "tags": list(spec.tags),
    }
    optional = {
        "run_at": utc(spec.run_at) if spec.run_at is not None else None,
        "delay": seconds(spec.delay, "delay"),
        "max_attempts": spec.max_attempts,
        "timeout": seconds(spec.timeout, "timeout"),
        "idempotency_key": spec.idempotency_key,
        "subject_key": spec.subject_key,
        "depends_on": list(spec.depends_on) or None,
        "group": spec.group,
        "concurrency_key": spec.concurrency_key,
        "deadline": utc(spec.deadline, "deadline") if spec.deadline is not None else None,
        "start_within": seconds(spec.start_within, "start_within"),
        "meta": spec.meta or None,
    }
    fields.update({k: v for k, v in optional.items() if v is not None})
    return fields


# --- text and JSON the database can store ----------------------------------------------------


def check_text(text: str, what: str) -> None:
    """Raise InvalidJobError if PostgreSQL cannot store `text` (NUL, lone surrogates)."""
    if "\x00" in text:
        raise InvalidJobError(f"{what} must not contain NUL (\\u0000)")
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            raise InvalidJobError(f"{what} must be valid Unicode (no lone surrogates)") from None


def storable_text(text: str) -> str:
    """`text` with what PostgreSQL cannot store spelled out (NUL as `\\x00`, a lone
    surrogate as `\\udXXX`): for text a worker records but did not choose, like errors."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode()
    return text


def encode_json(value: Any, what: str) -> bytes:
    """`value` as JSON the database can store and a worker can read back.
    Raises InvalidJobError naming `what`: not serializable, NUL in a string or key, a lone
    surrogate, or nested deeper than MAX_JSON_DEPTH."""
    try:
        data = msgspec.json.encode(value)
    except RecursionError:
        raise InvalidJobError(_too_deep(what)) from None
    except UnicodeEncodeError:
        raise InvalidJobError(f"{what} must be valid Unicode (no lone surrogates)") from None
    except (TypeError, msgspec.EncodeError, OverflowError) as exc:
        raise InvalidJobError(f"{what} is not JSON-serializable: {exc}") from None
    if _NUL_ESCAPE in data and _has_nul(data):
        raise InvalidJobError(f"{what} must not contain NUL (\\u0000)")
    # Nesting N deep takes N pairs of brackets; most values are too short or have too few
    # to be measured at all.
    if _deeper_than(data, MAX_JSON_DEPTH):
        raise InvalidJobError(_too_deep(what))
    return data


def _deeper_than(data: bytes, limit: int) -> bool:
    """Whether the JSON text `data` nests deeper than `limit`. Nesting N deep takes N pairs
    of brackets, so most values are too short or have too few to be measured at all."""
    return (
        len(data) > 2 * limit
        and data.count(b"[") + data.count(b"{") > limit
        and _nesting(data, limit) > limit
    )


def _too_deep(what: str) -> str:
    return f"{what} must nest at most {MAX_JSON_DEPTH} deep"


def _has_nul(data: bytes) -> bool:
    """Whether JSON text holds the escape \\u0000 (rather than an escaped backslash
    followed by the letters u0000)."""
    at = data.find(_NUL_ESCAPE)
    while at != -1:
        start = at
        while start > 0 and data[start - 1] == 0x5C:  # backslashes before this one
            start -= 1
        if (at - start) % 2 == 0:
            return True
        at = data.find(_NUL_ESCAPE, at + 1)
    return False


_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def _nesting(data: bytes, limit: int) -> int:
    """How deep the JSON text `data` nests (stops counting past `limit`).

    Strings are cut out (exactly: a string holding brackets must count for nothing) and
    everything but brackets dropped; then each pass removes the innermost pairs, so there
    are as many passes as levels. All of it is bytes operations in C: no decoding, no
    recursion, about 7 us for 1 KB of small objects."""
    # Without escaped backslashes, every \" left is an escaped quote; without those, the
    # quotes delimit strings, and every other piece of the split lies outside one.
    unescaped = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    skeleton = b"".join(unescaped.split(b'"')[::2]).translate(None, _NOT_BRACKETS)
    depth = 0
    while skeleton and depth <= limit:
        # Innermost pairs become a mark first, so a pair they enclose is not removed in
        # the same pass.
        skeleton = skeleton.replace(b"[]", b"x").replace(b"{}", b"x").replace(b"x", b"")
        depth += 1
    return depth


class UnreadableJSON(dict[str, str]):
    """A stored JSON value the broker does not decode: nested deeper than MAX_READ_DEPTH
    (only a hand-written INSERT can store one). It reads as a one-key object saying so, so
    listings still show the job; a worker fails such a job instead of running it."""

    def __init__(self, size: int) -> None:
        super().__init__(
            unreadable=f"JSON nested deeper than {MAX_READ_DEPTH} levels ({size} bytes)"
        )


def load_json(data: str | bytes) -> Any:
    """Decode JSON read from the database; a value nested deeper than MAX_READ_DEPTH is
    UnreadableJSON (the loader broker connections register, so one row never fails a
    whole result, and the verdict does not depend on the Python version)."""
    raw = data.encode() if isinstance(data, str) else data  # psycopg passes bytes
    if _deeper_than(raw, MAX_READ_DEPTH):
        return UnreadableJSON(len(raw))
    try:
        return msgspec.json.decode(data)
    except RecursionError:  # a decoder stopping short of MAX_READ_DEPTH; none known does
        return UnreadableJSON(len(data))
