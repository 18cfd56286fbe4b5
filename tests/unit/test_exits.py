"""The one exit-code table (broker._exits) and first_line, without a database."""

from __future__ import annotations

import psycopg
import pytest

from broker import errors
from broker._exits import (
    EXIT_BAD_INPUT,
    EXIT_CLOCK_SKEW,
    EXIT_FAILED,
    EXIT_ID_IN_USE,
    error_line,
    exit_code,
)
from broker._jobfile import JobFileError
from broker.cli._errors import CommandFailed, InputError, reported
from broker.worker.registry import ClockSkewTooLarge, WorkerIdInUse


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (WorkerIdInUse("id in use"), EXIT_ID_IN_USE),
        (ClockSkewTooLarge("skew"), EXIT_CLOCK_SKEW),
        (errors.InvalidJobError("bad kind"), EXIT_BAD_INPUT),
        (JobFileError("stdin", 2, "not valid JSON"), EXIT_BAD_INPUT),
        (errors.JobNotFound(7), EXIT_FAILED),
        (errors.InvalidTransition(7, "succeeded", "cancel"), EXIT_FAILED),
        (errors.IdempotencyConflict("k"), EXIT_FAILED),
        (errors.DatabaseUnavailable("down"), EXIT_FAILED),
        (errors.ConfigError("no migrations found"), EXIT_FAILED),
        (errors.InvalidSetting("BROKER_LEASE_TTL must be a number"), EXIT_BAD_INPUT),
        (psycopg.OperationalError("connection refused"), EXIT_FAILED),
        (ValueError("a bug"), None),
        (KeyboardInterrupt(), None),
    ],
)
def test_each_error_has_one_exit_code(exc: BaseException, code: int | None) -> None:
    assert exit_code(exc) == code


def test_worker_codes_keep_their_documented_values() -> None:
    # docs/worker-guide.md and docs/cli.md
    assert (EXIT_FAILED, EXIT_BAD_INPUT, EXIT_ID_IN_USE, EXIT_CLOCK_SKEW) == (1, 2, 3, 4)


def test_reported_errors_are_one_line_with_the_tables_code() -> None:
    failed = reported(psycopg.OperationalError("connection failed\n\tIs the server running?"))
    assert isinstance(failed, CommandFailed)
    assert (failed.exit_code, failed.format_message()) == (1, "connection failed")
    bad = reported(errors.InvalidJobError("kind must match ..."))
    assert isinstance(bad, InputError) and bad.exit_code == 2
    skew = reported(ClockSkewTooLarge("clock off by 9 s"))
    assert skew is not None and skew.exit_code == EXIT_CLOCK_SKEW
    assert reported(ValueError("a bug")) is None
    assert error_line("job 7 not found") == "error: job 7 not found"


@pytest.mark.parametrize(
    ("message", "default", "expected"),
    [
        ("one line", None, "one line"),
        ("  first\nsecond\n", None, "first"),
        ("", None, "RuntimeError"),
        ("  \n ", None, "RuntimeError"),
        ("", "database error", "database error"),
    ],
)
def test_first_line(message: str, default: str | None, expected: str) -> None:
    assert errors.first_line(RuntimeError(message), default) == expected
