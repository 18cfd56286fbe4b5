"""JobSpec's run_at at the edge of the calendar: an aware time whose UTC instant does not
exist is InvalidJobError before the database sees it."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from broker import InvalidJobError, JobSpec


def test_run_at_whose_utc_instant_overflows_is_invalid() -> None:
    edge = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5)))
    with pytest.raises(InvalidJobError, match="run_at is out of range"):
        JobSpec("k", run_at=edge).to_json()
