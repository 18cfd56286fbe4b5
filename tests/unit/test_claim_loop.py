"""The worker's claim loop driven by fake connections, with no database: claims are sized
to the free slots, a short batch claims again at once, only an empty claim means the
queues are drained (sleep until a notification or the poll), and outcomes reach the
writer."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest

from broker.config import Settings
from broker.lease import Statement
from broker.pruner import PrunerConfig
from broker.task import task
from broker.types import HeartbeatOutcome, Lease, WriteOutcome
from broker.worker import Worker, WorkerConfig
from broker.worker.heartbeat import HeartbeatConfig

T = TypeVar("T")
QUEUE = "unit"
# Long enough that no test sees a claim the poll interval caused, unless it asks for one.
NO_POLL = 60.0

gates: dict[int, asyncio.Event] = {}


@task("unit.claim_loop.wait")
async def wait_for_gate(job: int) -> str:
    await gates[job].wait()
    return f"done {job}"


class FakeDatabase:
    """Answers every statement a worker sends; claims come from `batches`, then none."""

    def __init__(self, batches: list[int]) -> None:
        self.batches = list(batches)
        self.statements: list[tuple[str, Statement[Any]]] = []
        self.claim_limits: list[int] = []
        self.finished: list[tuple[int, str]] = []
        self.next_job = 1
        # The registration as a waiting worker (broker/worker/wakeups.py): what was sent,
        # and the answers of the settled check (then True).
        self.waits: list[str] = []
        self.settled: list[bool] = []
        self.connections: list[FakeConnection] = []
        # The job ids of each beat of finished, unwritten leases; and, when set,
        # finishes wait for this event.
        self.beats: list[list[int]] = []
        self.finish_gate: asyncio.Event | None = None
        # Called soon after each claim returns its leases: before the worker's next turn
        # of the loop, as a notification read meanwhile would be.
        self.after_claim: Callable[[list[Lease]], None] | None = None
        self._changed = asyncio.Event()

    def connect(self, name: str) -> FakeConnection:
        conn = FakeConnection(self, name)
        self.connections.append(conn)
        return conn

    def answer(self, service: str, stmt: Statement[Any]) -> Any:
        self.statements.append((service, stmt))
        self._changed.set()
        params = stmt.params
        match stmt.query:
            case "db_clock" | "worker_register":
                return datetime.now(UTC)
            case "worker_seen":
                return datetime.now(UTC)
            case "worker_get":
                return None
            case "worker_stopped":
                return True
            case "job_reap" | "job_expire":
                return []
            case "claim_wait_register" | "claim_wait_leave":
                self.waits.append(stmt.query)
                return list(params["queues"])
            case "claim_wait_settled":
                self.waits.append(stmt.query)
                return self.settled.pop(0) if self.settled else True
            case "job_claim":
                self.claim_limits.append(params["limit"])
                size = self.batches.pop(0) if self.batches else 0
                assert size <= params["limit"], "claimed more than the free slots"
                leases = [self._lease(params["worker_id"]) for _ in range(size)]
                if self.after_claim is not None and leases:
                    asyncio.get_running_loop().call_soon(self.after_claim, leases)
                return leases
            case "job_heartbeat_many":
                return HeartbeatOutcome([], [], [])
            case "job_heartbeat_unwritten":
                self.beats.append(list(params["ids"]))
                return None
            case "job_finish_many":
                ids, epochs = params["ids"], params["epochs"]
                # The outcome column covers the rows before the completions (lease.finish).
                outcomes = [
                    *params["outcomes"],
                    *["complete"] * (len(ids) - len(params["outcomes"])),
                ]
                self.finished += list(zip(ids, outcomes, strict=True))
                return [WriteOutcome(i, e, True, None) for i, e in zip(ids, epochs, strict=True)]
        raise AssertionError(f"unexpected statement {stmt.query}")

    def _lease(self, worker_id: str) -> Lease:
        job = self.next_job
        self.next_job += 1
        gates[job] = asyncio.Event()
        return Lease(job, 1, QUEUE, "unit.claim_loop.wait", {"job": job}, 0, 1, 5, None, worker_id)

    async def until(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                self._changed.clear()
                await self._changed.wait()

    async def quiet(self, seconds: float = 0.2) -> int:
        """How many claims came during `seconds` of doing nothing."""
        before = len(self.claim_limits)
        await asyncio.sleep(seconds)
        return len(self.claim_limits) - before


class FakeConnection:
    def __init__(self, db: FakeDatabase, name: str) -> None:
        self.db = db
        self.name = name
        self.application_name = f"fake {name}"
        self.closed = False

    async def run(self, stmt: Statement[T]) -> T:
        await asyncio.sleep(0)
        if stmt.query == "job_finish_many" and self.db.finish_gate is not None:
            await self.db.finish_gate.wait()
        result: T = self.db.answer(self.name, stmt)
        return result

    async def close(self) -> None:
        self.closed = True


class QuietListener:
    """Stands in for the LISTEN connection; the tests call the worker's _on_jobs."""

    application_name = ""

    async def run(self) -> None:
        await asyncio.Event().wait()


def claim_params(db: FakeDatabase, field: str) -> list[Any]:
    return [stmt.params[field] for _, stmt in db.statements if stmt.query == "job_claim"]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path)


def make_worker(db: FakeDatabase, settings: Settings, concurrency: int, **options: Any) -> Worker:
    config = WorkerConfig(
        database_url="postgresql://unused.invalid/none",
        queues=(QUEUE,),
        concurrency=concurrency,
        settings=settings,
        poll_interval=options.pop("poll_interval", NO_POLL),
        pruner=PrunerConfig(interval=0),
        **options,
    )
    worker = Worker(config, connect=db.connect)
    worker.listener = QuietListener()  # type: ignore[assignment]
    return worker


def serve(worker: Worker, scenario: Callable[[], Awaitable[None]]) -> None:
    """Run the worker while `scenario` plays, then stop it (and let every handler end)."""

    async def main() -> None:
        handle = asyncio.create_task(worker.run())
        try:
            await scenario()
        finally:
            worker.stop()
            worker.stop()
            for gate in gates.values():
                gate.set()
            await asyncio.wait_for(handle, 10)

    asyncio.run(main())


def release(*jobs: int) -> None:
    for job in jobs:
        gates[job].set()


def test_a_finished_lease_is_kept_alive_until_its_outcome_is_written(settings: Settings) -> None:
    # The write can wait behind a prune batch or the reaper on the shared connection for
    # longer than the lease TTL; a lease left to expire meanwhile is reaped and run again.
    db = FakeDatabase([1])
    db.finish_gate = asyncio.Event()
    worker = make_worker(db, settings, concurrency=1, heartbeat=HeartbeatConfig(interval=0.02))

    async def scenario() -> None:
        await db.until(lambda: db.claim_limits[:1] == [1])
        release(1)
        await db.until(lambda: 1 in worker._held and worker._held[1].finished)
        await db.until(lambda: len(db.beats) >= 2)
        assert db.beats[-1] == [1]  # finished, its write held up: still beaten
        assert db.finish_gate is not None
        db.finish_gate.set()
        await db.until(lambda: db.finished == [(1, "complete")])
        beats = len(db.beats)
        await asyncio.sleep(0.1)  # five beat intervals
        assert len(db.beats) == beats  # written: nothing left to extend, no statement

    serve(worker, scenario)


def test_claims_are_sized_to_the_free_slots(settings: Settings) -> None:
    db = FakeDatabase([3])
    worker = make_worker(db, settings, concurrency=3)

    async def scenario() -> None:
        await db.until(lambda: db.claim_limits == [3])
        # Every slot is taken: no claim at all until one frees, however long.
        assert await db.quiet() == 0
        release(2)
        await db.until(lambda: len(db.claim_limits) == 2)
        assert db.claim_limits == [3, 1]
        await db.until(lambda: db.finished == [(2, "complete")])

    serve(worker, scenario)
    assert worker.claimed == 3


def test_a_short_batch_claims_again_at_once(settings: Settings) -> None:
    # Other workers' locked rows make a batch short: that is no proof the queue is empty.
    db = FakeDatabase([2, 1])
    worker = make_worker(db, settings, concurrency=4)

    async def scenario() -> None:
        # The empty third claim registers the worker as waiting and, settled, claims once
        # more before it sleeps (broker/worker/wakeups.py).
        await db.until(lambda: len(db.claim_limits) == 4)
        assert db.claim_limits == [4, 2, 1, 1]
        assert db.waits == ["claim_wait_register", "claim_wait_settled"]
        assert await db.quiet() == 0

    serve(worker, scenario)


def test_an_empty_claim_sleeps_until_a_notification_for_its_queues(settings: Settings) -> None:
    db = FakeDatabase([])
    worker = make_worker(db, settings, concurrency=2)

    async def scenario() -> None:
        await db.until(lambda: db.claim_limits == [2, 2])
        assert await db.quiet() == 0
        worker._on_jobs("another queue")
        assert await db.quiet() == 0
        db.batches = [1]
        worker._on_jobs(QUEUE)
        await db.until(lambda: db.claim_limits == [2, 2, 2, 1])
        assert claim_params(db, "queues") == [[QUEUE]] * 4
        # Registered once: still waiting, so nothing more to tell the database.
        assert db.waits == ["claim_wait_register", "claim_wait_settled"]

    serve(worker, scenario)


def test_an_enqueue_in_flight_makes_the_waiting_worker_claim_again_soon(
    settings: Settings,
) -> None:
    # Until the settled check passes, an enqueue that missed the registration may still
    # commit: the worker claims again within milliseconds, not after the poll interval.
    db = FakeDatabase([])
    db.settled = [False, False]
    worker = make_worker(db, settings, concurrency=2)

    async def scenario() -> None:
        await db.until(lambda: len(db.claim_limits) == 4, timeout=2.0)
        assert db.waits == ["claim_wait_register"] + ["claim_wait_settled"] * 3
        assert await db.quiet() == 0

    serve(worker, scenario)


def test_a_waiting_worker_wakes_to_refresh_its_registration(settings: Settings) -> None:
    # Whatever the poll interval (here a minute), the registration is rewritten before it
    # expires, without settling again while it has not lapsed.
    db = FakeDatabase([])
    worker = make_worker(db, settings, concurrency=2)
    worker.wakeups.ttl = 0.3

    async def scenario() -> None:
        await db.until(lambda: db.waits.count("claim_wait_register") >= 3, timeout=2.0)
        assert db.waits.count("claim_wait_settled") == 1

    serve(worker, scenario)


def test_two_full_claims_in_a_row_leave_the_waiting_workers(settings: Settings) -> None:
    # A backlog: the queue holds more than the free slots, so enqueues need not tell this
    # worker. One full claim is not proof (one job for one free slot); two in a row are.
    # The next empty claim registers it again.
    db = FakeDatabase([])
    worker = make_worker(db, settings, concurrency=2)

    async def scenario() -> None:
        await db.until(lambda: db.claim_limits == [2, 2])
        db.batches = [2, 1]
        worker._on_jobs(QUEUE)
        await db.until(lambda: db.claim_limits == [2, 2, 2])
        assert await db.quiet() == 0  # both slots taken, still registered
        assert "claim_wait_leave" not in db.waits
        release(1)
        await db.until(lambda: "claim_wait_leave" in db.waits)
        release(2, 3)
        await db.until(lambda: db.waits.count("claim_wait_settled") == 2)
        waited = ["claim_wait_register", "claim_wait_settled"]
        assert db.waits == [*waited, "claim_wait_leave", *waited]

    serve(worker, scenario)


def test_one_full_claim_of_a_trickle_keeps_the_registration(settings: Settings) -> None:
    # One slot, one job at a time: each claim fills the slot, the next comes back empty;
    # the worker stays registered (no leave, no new registration per job).
    db = FakeDatabase([])
    worker = make_worker(db, settings, concurrency=1)

    async def one(job: int) -> None:
        db.batches = [1]
        worker._on_jobs(QUEUE)
        await db.until(lambda: db.next_job > job)
        release(job)
        await db.until(lambda: (job, "complete") in db.finished)

    async def scenario() -> None:
        await db.until(lambda: db.claim_limits == [1, 1])
        for job in (1, 2, 3):
            await one(job)
        await db.until(lambda: len(db.claim_limits) == 8)
        assert db.waits == ["claim_wait_register", "claim_wait_settled"]

    serve(worker, scenario)


def test_an_empty_claim_claims_again_after_the_poll_interval(settings: Settings) -> None:
    db = FakeDatabase([])
    worker = make_worker(db, settings, concurrency=2, poll_interval=0.05)

    async def scenario() -> None:
        await db.until(lambda: len(db.claim_limits) >= 4)

    serve(worker, scenario)


def test_a_cancel_heard_before_the_handler_starts_is_acknowledged(settings: Settings) -> None:
    # A cancel notification read between the claim and the first step of the handler's
    # task: a task cancelled then never runs its coroutine, so the job was never
    # acknowledged (its lease beaten forever) and its slot never came back.
    db = FakeDatabase([1, 1])
    worker = make_worker(db, settings, concurrency=1)
    cancelled: list[int] = []

    def cancel_first(leases: list[Lease]) -> None:
        if not cancelled:
            cancelled.append(leases[0].job_id)
            worker._on_cancel(leases[0].job_id)

    db.after_claim = cancel_first

    async def scenario() -> None:
        await db.until(lambda: (1, "cancel") in db.finished)
        # The slot is free again: the next claim asks for it and its job runs.
        await db.until(lambda: db.claim_limits[:2] == [1, 1])
        release(2)
        await db.until(lambda: (2, "complete") in db.finished)

    serve(worker, scenario)
    assert cancelled == [1]
    assert db.finished == [(1, "cancel"), (2, "complete")]


def test_outcomes_are_written_and_a_stop_hands_back_what_is_running(settings: Settings) -> None:
    db = FakeDatabase([3])
    worker = make_worker(db, settings, concurrency=3, shutdown_grace=0.0)

    async def main() -> None:
        handle = asyncio.create_task(worker.run())
        await db.until(lambda: db.claim_limits == [3])
        release(1)
        await db.until(lambda: db.finished == [(1, "complete")] and len(db.claim_limits) == 3)
        worker.stop()
        await asyncio.wait_for(handle, 10)

    asyncio.run(main())
    assert sorted(db.finished) == [(1, "complete"), (2, "release"), (3, "release")]
    # No claim after the stop; the worker stopped waiting, then the registry row was
    # marked stopped last; all closed.
    assert db.claim_limits == [3, 1, 1]
    assert db.waits == ["claim_wait_register", "claim_wait_settled", "claim_wait_leave"]
    assert db.statements[-1][1].query == "worker_stopped"
    # Two connections: the lease one runs claims, beats and the registry row (all short),
    # so no write, reap or prune can delay a beat; writes and the reaper share the other.
    assert sorted(conn.name for conn in db.connections) == ["lease", "work"]
    on_leases = {stmt.query for service, stmt in db.statements if service == "lease"}
    assert {"job_claim", "worker_register"} <= on_leases
    assert on_leases <= {"db_clock", "worker_get", "worker_register", "worker_seen"} | {
        "job_claim",
        "job_heartbeat_many",
        "worker_stopped",
        "claim_wait_register",
        "claim_wait_settled",
        "claim_wait_leave",
    }
    on_work = {stmt.query for service, stmt in db.statements if service == "work"}
    assert {"job_finish_many", "job_reap"} <= on_work
    assert "job_claim" not in on_work
    assert all(conn.closed for conn in db.connections)
