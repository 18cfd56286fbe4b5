"""JobSpec.to_json and the enqueue payload: what the Python side converts or rejects before
the database sees a request."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from broker import InvalidJobError, JobSpec
from broker.lease import enqueue_many


def test_defaults_only() -> None:
    assert JobSpec("send_email").to_json() == {
        "kind": "send_email",
        "args": {},
        "queue": "default",
        "priority": 0,
        "tags": [],
    }


def test_none_fields_are_left_out() -> None:
    spec = JobSpec("k", run_at=None, delay=None, max_attempts=None, timeout=None).to_json()
    for absent in ("run_at", "delay", "max_attempts", "timeout", "idempotency_key", "subject_key"):
        assert absent not in spec


def test_every_field_is_passed_on() -> None:
    when = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
    spec = JobSpec(
        "k",
        {"to": "a@example.com"},
        queue="emails",
        priority=5,
        run_at=when,
        max_attempts=3,
        timeout=30,
        idempotency_key="idem-1",
        subject_key="user:1",
        tags=("a", "b"),
    ).to_json()
    assert spec == {
        "kind": "k",
        "args": {"to": "a@example.com"},
        "queue": "emails",
        "priority": 5,
        "run_at": when,
        "max_attempts": 3,
        "timeout": 30.0,
        "idempotency_key": "idem-1",
        "subject_key": "user:1",
        "tags": ["a", "b"],
    }


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (timedelta(minutes=2, milliseconds=500), 120.5),
        (timedelta(0), 0.0),
        (7, 7.0),
        (0.25, 0.25),
    ],
)
def test_durations_become_seconds(value: float | timedelta, seconds: float) -> None:
    spec = JobSpec("k", delay=value, timeout=value).to_json()
    assert spec["delay"] == seconds
    assert spec["timeout"] == seconds
    assert isinstance(spec["delay"], float)


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_durations_are_rejected(bad: float) -> None:
    with pytest.raises(InvalidJobError, match="delay must be a finite number"):
        JobSpec("k", delay=bad).to_json()
    with pytest.raises(InvalidJobError, match="timeout must be a finite number"):
        JobSpec("k", timeout=bad).to_json()


def test_naive_run_at_is_rejected() -> None:
    with pytest.raises(InvalidJobError, match="run_at must be timezone-aware"):
        JobSpec("k", run_at=datetime(2030, 1, 1)).to_json()


def test_aware_run_at_in_any_zone_is_kept() -> None:
    when = datetime(2030, 1, 1, 12, tzinfo=timezone(timedelta(hours=-5)))
    assert JobSpec("k", run_at=when).to_json()["run_at"] == when
    payload = json.loads(enqueue_many([JobSpec("k", run_at=when)]).params["specs"])
    # The offset travels with the timestamp, so the database sees the same instant.
    assert datetime.fromisoformat(payload[0]["run_at"]) == when


def test_run_at_and_delay_together_are_rejected() -> None:
    with pytest.raises(InvalidJobError, match="give run_at or delay, not both"):
        JobSpec("k", run_at=datetime(2030, 1, 1, tzinfo=UTC), delay=5).to_json()


@pytest.mark.parametrize("bad", [-1, -0.001, timedelta(seconds=-3)])
def test_negative_delay_is_rejected(bad: float | timedelta) -> None:
    with pytest.raises(InvalidJobError, match="delay must not be negative"):
        JobSpec("k", delay=bad).to_json()


def test_tags_as_a_string_are_rejected() -> None:
    with pytest.raises(InvalidJobError, match="tags must be a list of strings"):
        JobSpec("k", tags="urgent").to_json()


def test_tags_from_any_sequence_become_a_list() -> None:
    assert JobSpec("k", tags=("x", "y")).to_json()["tags"] == ["x", "y"]


@pytest.mark.parametrize("bad", [[1, 2], "text", 3, None])
def test_args_must_be_a_mapping(bad: Any) -> None:
    with pytest.raises(InvalidJobError, match="args must be a mapping"):
        JobSpec("k", bad).to_json()


@pytest.mark.parametrize(
    "args",
    [{"when": object()}, {"z": 1j}, {"f": lambda: 1}, {"nested": [{"x": object()}]}],
    ids=["object", "complex", "function", "nested"],
)
def test_non_json_args_are_rejected(args: dict[str, Any]) -> None:
    with pytest.raises(InvalidJobError, match="not JSON-serializable"):
        enqueue_many([JobSpec("k", args)])


def test_json_args_round_trip_in_payload() -> None:
    args = {"n": 1, "f": 1.5, "s": "é", "l": [1, None, True], "o": {"nested": {}}}
    payload = json.loads(enqueue_many([JobSpec("k", args)]).params["specs"])
    assert payload == [{"kind": "k", "args": args, "queue": "default", "priority": 0, "tags": []}]


def test_a_bad_spec_fails_the_whole_batch_before_the_database() -> None:
    with pytest.raises(InvalidJobError):
        enqueue_many([JobSpec("ok"), JobSpec("bad", run_at=datetime(2030, 1, 1))])
