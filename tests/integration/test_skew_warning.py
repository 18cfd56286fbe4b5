"""The clock-skew warning is said once per change of state, not on every heartbeat: a
Registration on a real database, with this host's clock (as registry.py reads it) moved
beyond the tolerance and back."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from broker.config import Settings
from broker.worker import registry
from broker.worker._conn import Connection

TOLERANCE = 5.0


def test_skew_is_warned_once_and_its_recovery_said_once(
    db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="broker.worker.registry")
    offset = 0.0
    real = time.time
    monkeypatch.setattr(registry, "time", SimpleNamespace(time=lambda: real() + offset))
    settings = Settings(database_url=db_url, state_dir=tmp_path, clock_skew_tolerance=TOLERANCE)
    conn = Connection(db_url, settings.schema, "lease")
    registration = registry.Registration(
        conn,
        settings,
        seq=1,
        queues=["default"],
        concurrency=1,
        version="0",
        lease_ttl=15.0,
        max_clock_skew=None,
    )

    async def scenario() -> list[tuple[str, bool]]:
        nonlocal offset
        seen: list[tuple[str, bool]] = []
        registration.take_identity()
        try:
            await registration.register(asyncio.Event())
            for offset, beats in ((0.0, 2), (60.0, 4), (0.0, 3), (-60.0, 3)):
                for _ in range(beats):
                    await registration.seen()
                seen.append((f"{offset:+.0f}", registration.skewed))
        finally:
            await registration.unregister()
            await conn.close()
            registration.release()
        return seen

    states = asyncio.run(scenario())
    assert states == [("+0", False), ("+60", True), ("+0", False), ("-60", True)]
    said = [
        (r.levelname, r.getMessage().split(" (")[0].split(" by ")[0])
        for r in caplog.records
        if r.name == "broker.worker.registry"
    ]
    assert said == [
        ("WARNING", "clock differs from the database's"),
        ("INFO", "clock back within 5.0s of the database's"),
        ("WARNING", "clock differs from the database's"),
    ]
    # The measured skew is this host's offset, to within a loaded machine's round trip.
    warned = [r for r in caplog.records if r.levelname == "WARNING"]
    assert [round(vars(r)["clock_skew"] / 60) for r in warned] == [-1, 1]
