"""The worker's outcome writer: a batch the database refuses is written again one outcome
at a time, so only the write that fails on its own is dropped."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg

from broker import lease
from broker.lease import Failure, Finish, Lease, Statement, WriteOutcome
from broker.worker.writer import OutcomeWriter, WriterConfig

POISON = 13


class FakeConnection:
    """Applies every fenced write, except that any statement touching job POISON fails."""

    def __init__(self) -> None:
        self.statements: list[list[int]] = []

    async def run(self, stmt: Statement[Any]) -> Any:
        ids = list(stmt.params.get("ids") or stmt.params.get("job_ids") or [])
        self.statements.append(ids)
        if POISON in ids:
            raise psycopg.DataError("a value this statement cannot store")
        if stmt.query == "log_append_many":
            return stmt.decode([(i,) for i in ids])
        return stmt.decode([(i, "succeeded") for i in ids])


def lease_of(job_id: int) -> Lease:
    return Lease(job_id, 1, "q", "k", {}, 0, 1, 1, None, "w:1")


def test_one_bad_outcome_does_not_drop_its_neighbours() -> None:
    written: list[tuple[int, str, bool]] = []

    def on_written(row: Finish, outcome: WriteOutcome) -> None:
        written.append((row.lease.job_id, type(row).__name__, outcome.applied))

    async def scenario() -> FakeConnection:
        conn = FakeConnection()
        writer = OutcomeWriter(conn, "jobs", on_written, WriterConfig(flush_interval=0.01))  # type: ignore[arg-type]
        task = asyncio.create_task(writer.run())
        for job_id in (11, 12, POISON, 14):
            writer.submit(lease.completed(lease_of(job_id), {"ok": True}))
        writer.submit(lease.failed(lease_of(15), Failure("boom")))
        writer.add_log(lease_of(POISON), "a line of the bad job")
        writer.add_log(lease_of(11), "a line of a good job")
        await asyncio.wait_for(writer.wait_idle(), 5)
        task.cancel()
        return conn

    conn = asyncio.run(scenario())
    assert sorted(written) == [
        (11, "Completed", True),
        (12, "Completed", True),
        (14, "Completed", True),
        (15, "Failed", True),
    ]
    # The batch was tried whole first, then each piece alone.
    assert conn.statements[0] == [POISON, 11]
    assert [POISON] in conn.statements and [11] in conn.statements
