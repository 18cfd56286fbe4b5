"""Exit codes of every pg-broker command (`broker ...` and `python -m broker.worker`), and
the one table that says which error ends a command with which code and line."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

EXIT_OK = 0
# The broker or the database refused or failed; for a worker, also a configuration error
# at start.
EXIT_FAILED = 1
# Bad input: a usage error (click's own code), an invalid job, a bad line in a jobs file,
# a BROKER_* variable with a value it cannot take.
EXIT_BAD_INPUT = 2
EXIT_ID_IN_USE = 3
EXIT_CLOCK_SKEW = 4
# As a shell reports SIGINT (128 + 2).
EXIT_INTERRUPTED = 130


@dataclass(frozen=True, slots=True)
class ExitRule:
    """Errors of these types end a command with this code."""

    errors: tuple[type[BaseException], ...]
    code: int


@cache
def exit_rules() -> tuple[ExitRule, ...]:
    """The table, most specific first (the first rule that matches wins). Built on first
    use: the worker's exceptions are not worth importing for a command that succeeds."""
    import psycopg

    from broker._jobfile import JobFileError
    from broker.errors import (
        BrokerError,
        InvalidJobError,
        InvalidQueueSettings,
        InvalidSetting,
        NotMigrated,
    )
    from broker.worker.registry import ClockSkewTooLarge, WorkerIdInUse

    return (
        ExitRule((WorkerIdInUse,), EXIT_ID_IN_USE),
        ExitRule((ClockSkewTooLarge,), EXIT_CLOCK_SKEW),
        # Not migrated: the fix is the operator's (`broker migrate`), as with bad input.
        ExitRule(
            (InvalidJobError, InvalidQueueSettings, InvalidSetting, JobFileError, NotMigrated),
            EXIT_BAD_INPUT,
        ),
        ExitRule((BrokerError, psycopg.Error), EXIT_FAILED),
    )


def exit_code(exc: BaseException) -> int | None:
    """The code `exc` ends a command with, or None when it is not one pg-broker reports
    (a bug: let it show its traceback)."""
    for rule in exit_rules():
        if isinstance(exc, rule.errors):
            return rule.code
    return None


def error_line(message: str) -> str:
    """How every command reports an error: this one line on stderr."""
    return f"error: {message}"
