"""The worker's own log without a database: the exception line of a stored error, the
outcome line's fields and level, and the JSON format (broker._logging)."""

from __future__ import annotations

import io
import json
import logging

import pytest

from broker import _logging, lease
from broker.errors import error_line
from broker.lease import Failure
from broker.task import Task
from broker.types import Fence, Lease, WriteOutcome
from broker.worker import _joblog
from broker.worker._outcome import MAX_ERROR_CHARS, outcome

WORKER = "host:1"
JOB = Lease(7, 3, "mail", "send_mail", {}, 0, 2, 5, None, WORKER)


def stored_error(exc: Exception) -> str:
    """What the worker stores for `exc` raised by a handler (the traceback text)."""
    task = Task(kind="send_mail", fn=lambda: None)
    row = outcome(task, JOB, raised=exc, worker_id=WORKER)
    assert isinstance(row, lease.Failed)
    return row.failure.error


def raise_(exc: Exception) -> None:
    raise exc


def caught(fn: object, *args: object) -> Exception:
    try:
        fn(*args)  # type: ignore[operator]
    except Exception as exc:
        return exc
    raise AssertionError("did not raise")


def test_error_line_is_the_exception_line_not_the_traceback_header() -> None:
    text = stored_error(caught(raise_, ValueError("boom")))
    assert text.startswith("Traceback (most recent call last):")
    assert error_line(text) == "ValueError: boom"


def test_error_line_of_a_multiline_message_is_its_first_line() -> None:
    text = stored_error(caught(raise_, ValueError("first\nsecond")))
    assert error_line(text) == "ValueError: first"


def test_error_line_of_a_chained_exception_is_the_last_one_raised() -> None:
    def wrap() -> None:
        try:
            raise KeyError("inner")
        except KeyError as exc:
            raise RuntimeError("outer") from exc

    text = stored_error(caught(wrap))
    assert "KeyError: 'inner'" in text
    assert error_line(text) == "RuntimeError: outer"


def test_error_line_of_a_traceback_cut_at_its_start() -> None:
    # Alternating frames, which the traceback does not fold into "repeated N times".
    def ping(n: int) -> None:
        if n == 0:
            raise LookupError("x" * 200)
        pong(n - 1)

    def pong(n: int) -> None:
        ping(n)

    text = stored_error(caught(ping, 200))
    assert len(text) == MAX_ERROR_CHARS and not text.startswith("Traceback")
    assert error_line(text) == "LookupError: " + "x" * 200


def test_error_line_of_an_exception_group_is_the_group() -> None:
    group = ExceptionGroup("two failed", [ValueError("a"), TypeError("b")])
    assert (
        error_line(stored_error(caught(raise_, group)))
        == "ExceptionGroup: two failed (2 sub-exceptions)"
    )


def test_error_line_of_plain_text_is_its_first_line() -> None:
    assert error_line("timed out after 1.5s") == "timed out after 1.5s"
    assert error_line("\n  no task registered\nmore") == "no task registered"
    assert error_line("") == ""


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="broker.worker.jobs")
    return caplog


def test_a_retried_failure_logs_one_info_line_with_its_fields(
    logs: pytest.LogCaptureFixture,
) -> None:
    row = lease.failed(JOB, Failure(stored_error(caught(raise_, ValueError("boom")))))
    _joblog.outcome_written(row, WriteOutcome(7, 3, True, "queued"), 0.25)
    [record] = logs.records
    assert record.levelno == logging.INFO
    assert record.getMessage() == (
        "job 7 send_mail attempt 2: failed -> queued after 0.250s: ValueError: boom"
    )
    fields = {
        k: getattr(record, k)
        for k in _joblog.outcome_fields(row, WriteOutcome(7, 3, True, "queued"), 0.25)
    }
    assert fields == {
        "job_id": 7,
        "kind": "send_mail",
        "queue": "mail",
        "attempt": 2,
        "epoch": 3,
        "outcome": "failed",
        "state": "queued",
        "duration": 0.25,
        "error": "ValueError: boom",
    }


def test_a_success_has_no_error_and_a_rejected_write_warns(
    logs: pytest.LogCaptureFixture,
) -> None:
    _joblog.outcome_written(lease.completed(JOB, 1), WriteOutcome(7, 3, True, "succeeded"), 0.01)
    _joblog.outcome_written(lease.released(JOB), WriteOutcome(7, 3, False, None), None)
    done, rejected = logs.records
    assert done.getMessage() == "job 7 send_mail attempt 2: completed -> succeeded after 0.010s"
    assert not hasattr(done, "error")
    assert rejected.levelno == logging.WARNING
    assert "released outcome rejected, the lease was lost" in rejected.getMessage()
    assert vars(rejected)["duration"] is None


def test_a_fence_only_row_still_logs() -> None:
    row = lease.failed(Fence(9, 1, WORKER), Failure("gone"))
    fields = _joblog.outcome_fields(row, WriteOutcome(9, 1, True, "failed"), None)
    assert (fields["job_id"], fields["kind"], fields["error"]) == (9, None, "gone")


def test_json_formatter_writes_one_object_per_line_with_extra_fields() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_logging.JsonFormatter())
    logger = logging.getLogger("tests.json_format")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("two\nlines %s", "here", extra={"job_id": 5, "state": "failed"})
        try:
            raise ValueError("inside")
        except ValueError:
            logger.exception("with a traceback")
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "two\nlines here"
    assert (first["level"], first["logger"]) == ("WARNING", "tests.json_format")
    assert (first["job_id"], first["state"]) == (5, "failed")
    assert first["timestamp"].endswith("+00:00")
    assert "args" not in first and "msg" not in first
    assert (
        second["exception"].startswith("Traceback") and "ValueError: inside" in second["exception"]
    )


def test_configure_refuses_an_unknown_format() -> None:
    with pytest.raises(ValueError, match="text, json"):
        _logging.configure("INFO", "xml")
