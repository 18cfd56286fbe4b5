"""The broker's exceptions, and the one place where database errors become them."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import psycopg


def first_line(exc: BaseException, default: str | None = None) -> str:
    """The first line of an exception's message, stripped, for a one-line report; `default`
    (else the exception's type name) when the message is empty or only whitespace."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else default or type(exc).__name__


_FRAME = '  File "'
_GROUP_HEADER = "Exception Group Traceback (most recent call last):"
_GROUP_LINE = re.compile(r"^  \| (\S.*)$")


def error_line(error: str) -> str:
    """The line of a stored error that names it, for a one-line report. For a traceback
    (whole, chained, or cut at its start, as the worker stores it) the exception line after
    its last frame (`ValueError: boom`, not `Traceback (most recent call last):`); for an
    exception group, the group's own line; for any other text, its first non-blank line."""
    lines = error.splitlines()
    frames = [i for i, line in enumerate(lines) if line.startswith(_FRAME)]
    if frames:
        for line in lines[frames[-1] + 1 :]:
            if line and not line[0].isspace():
                return line
    first = next((line.strip() for line in lines if line.strip()), "")
    if first.endswith(_GROUP_HEADER):
        for line in lines:
            found = _GROUP_LINE.match(line)
            if found and not found.group(1).startswith("File "):
                return found.group(1)
    return first


class BrokerError(Exception):
    """Base class of every error pg-broker raises on purpose."""


class ConfigError(BrokerError):
    """A setting is missing or malformed."""


class InvalidSetting(ConfigError):
    """A BROKER_* environment variable holds a value it cannot take (bad input: the CLI and
    the worker exit 2)."""


class InvalidJobError(BrokerError, ValueError):
    """A request is outside the job contract (broker.spec): a bad name, size or range in an
    enqueue, or text or JSON the database cannot store (NUL, lone surrogates, nesting past
    the depth limit) in an enqueue, a result, an error or a log line."""


class LeaseLost(BrokerError):
    """A fenced write matched no row: the lease expired, was reaped, or a newer epoch owns the job.

    The write was not applied and was recorded as a `stale_write_rejected` event.
    """

    def __init__(self, job_id: int, epoch: int, write: str) -> None:
        super().__init__(f"lease lost on job {job_id} (epoch {epoch}): {write} rejected")
        self.job_id = job_id
        self.epoch = epoch
        self.write = write


class IdempotencyConflict(BrokerError):
    """The idempotency key is already taken by a job created from a different request."""

    def __init__(self, key: str, job_id: int | None = None) -> None:
        super().__init__(
            f"idempotency key {key!r} was already used for a different request"
            + (f" (job {job_id})" if job_id is not None else "")
        )
        self.key = key
        self.job_id = job_id


class JobNotFound(BrokerError, LookupError):
    """No job has this id."""

    def __init__(self, job_id: int) -> None:
        super().__init__(f"job {job_id} not found")
        self.job_id = job_id


class InvalidTransition(BrokerError):
    """The job's current state does not allow the requested operation (cancel, retry), or
    (retry) one of its dependencies is failed or cancelled."""

    def __init__(self, job_id: int, state: str, action: str, message: str | None = None) -> None:
        super().__init__(message or f"cannot {action} job {job_id}: it is {state}")
        self.job_id = job_id
        self.state = state
        self.action = action


class ScheduleNotFound(BrokerError, LookupError):
    """No schedule has this name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"schedule {name!r} not found")
        self.name = name


class InvalidQueueSettings(BrokerError):
    """A queue limit out of bounds (below 1, a period that is not positive, a rate_limit
    without a rate_period) or a bad queue name."""


class DatabaseUnavailable(BrokerError):
    """PostgreSQL could not be reached or dropped the connection, or refused it for good
    (the database does not exist, the role or password is wrong)."""


class NotMigrated(BrokerError):
    """The database lacks the broker's schema, or a table or function of it: it was never
    migrated, or is behind this code. `broker migrate` fixes it."""

    def __init__(self, missing: str) -> None:
        super().__init__(f"the database is not migrated ({missing}): run `broker migrate`")
        self.missing = missing


# SQLSTATEs raised on purpose by the broker's SQL functions (see the migrations).
SQLSTATE_IDEMPOTENCY_CONFLICT = "PB001"
SQLSTATE_INVALID_JOB = "PB002"
SQLSTATE_JOB_NOT_FOUND = "PB003"
SQLSTATE_INVALID_TRANSITION = "PB004"
SQLSTATE_SCHEDULE_NOT_FOUND = "PB005"
SQLSTATE_INVALID_QUEUE_SETTINGS = "PB010"
# undefined_table, invalid_schema_name, undefined_function: what a broker statement meets
# on a database `broker migrate` has not (fully) run on.
SQLSTATES_NOT_MIGRATED = frozenset({"42P01", "3F000", "42883"})

# What a prepared statement lost between transactions looks like (invalid_sql_statement_name,
# duplicate_prepared_statement; a bind to another client's statement of the same name is a
# protocol violation): a transaction pooler without prepared-statement support in front.
_LOST_PREPARED = ("26000", "42P05")
POOLER_HINT = (
    "prepared statements do not survive between transactions on this connection"
    " (a transaction pooler such as PgBouncer before 1.21?): set BROKER_PREPARE_THRESHOLD=none"
)


def translate(exc: psycopg.Error | UnicodeEncodeError) -> BrokerError | None:
    """Map a database error raised by broker SQL to the broker's own exception, if it is one.

    Every data error (SQLSTATE class 22, and psycopg's own refusal to send text PostgreSQL
    cannot store) is the caller's bad input: InvalidJobError, never a server error."""
    import psycopg

    from broker.spec import CONSTRAINT_MESSAGES

    if isinstance(exc, UnicodeEncodeError):
        # psycopg encodes parameters as UTF-8; a lone surrogate has no encoding.
        return InvalidJobError("text must be valid Unicode (no lone surrogates)")
    state = exc.sqlstate
    diag = exc.diag
    if state == SQLSTATE_IDEMPOTENCY_CONFLICT:
        key = diag.message_detail or ""
        hint = diag.message_hint or ""
        job_id = int(hint) if hint.isdigit() else None
        return IdempotencyConflict(key, job_id)
    if state == SQLSTATE_JOB_NOT_FOUND:
        return JobNotFound(int(diag.message_hint or 0))
    if state == SQLSTATE_SCHEDULE_NOT_FOUND:
        return ScheduleNotFound(diag.message_hint or "")
    if state == SQLSTATE_INVALID_TRANSITION:
        # The message reads "cannot <action> job <id>: it is <state>".
        action = (diag.message_primary or "cannot change").split()[1]
        # retry_job() may say more (a dependency that failed): the message is kept.
        return InvalidTransition(
            int(diag.message_hint or 0), diag.message_detail or "", action, diag.message_primary
        )
    if state == SQLSTATE_INVALID_QUEUE_SETTINGS:
        return InvalidQueueSettings(diag.message_primary or "invalid queue settings")
    if state in _LOST_PREPARED or (state == "08P01" and "prepared statement" in str(exc)):
        # The connection's idea of its prepared statements is wrong now: callers discard
        # it, as after any DatabaseUnavailable.
        return DatabaseUnavailable(f"{first_line(exc)}: {POOLER_HINT}")
    if state in SQLSTATES_NOT_MIGRATED:
        return NotMigrated(diag.message_primary or first_line(exc))
    if state is not None and (state.startswith("40") or state == "57014"):
        # Serialization failures, deadlocks (class 40) and statement timeouts: the server
        # is fine and the caller may retry; keep psycopg's precise error. (psycopg's
        # classes for these derive from OperationalError, hence the check by SQLSTATE.)
        return None
    if state == "22003":
        return InvalidJobError("a number is out of range: " + (diag.message_primary or ""))
    if state == "23502" and diag.column_name and diag.table_name == "jobs":
        return InvalidJobError(f"{diag.column_name} is required")
    if state == "23514" and diag.constraint_name in CONSTRAINT_MESSAGES:
        # The row itself (in the error's detail) is deliberately not repeated.
        return InvalidJobError(CONSTRAINT_MESSAGES[diag.constraint_name])
    if state == SQLSTATE_INVALID_JOB or (state is not None and state.startswith("22")):
        return InvalidJobError(diag.message_primary or str(exc))
    if state is None and isinstance(exc, psycopg.DataError):
        # Raised by psycopg before sending, e.g. "PostgreSQL text fields cannot contain
        # NUL (0x00) bytes".
        return InvalidJobError(first_line(exc, "invalid data"))
    if isinstance(exc, psycopg.OperationalError):
        return DatabaseUnavailable(first_line(exc, "database error"))
    return None
