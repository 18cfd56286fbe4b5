"""Plain `def` handlers in a real worker (in this process, its loop on a thread) against a
real database: what the handler threads (broker/worker/_threads.py) must keep. A timed-out
handler fails its job and frees its slot while its thread runs on; an exception is a
failed attempt; a lost lease, a cancel and a shutdown stop waiting for a running handler,
and its late result is never written; each job sees its own contextvars context, even on
the same thread as the job before it, and its ctx.log lines reach job_logs."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from broker import Broker, JobContext, JobSpec, task
from broker.config import Settings
from broker.pruner import PrunerConfig
from broker.worker import Worker, WorkerConfig
from broker.worker.heartbeat import HeartbeatConfig

QUEUE = "sync_handlers"
WAIT = 15.0

# Per test gate name: set by the test to let the handler return, and what the handler saw.
GATES: dict[str, threading.Event] = {}
STARTED: dict[str, threading.Event] = {}
RETURNED: dict[str, threading.Event] = {}
REASONS: dict[str, str | None] = {}
SEEN: list[tuple[int, str]] = []
var: contextvars.ContextVar[str] = contextvars.ContextVar("sync_handlers", default="unset")


@task("sync_handlers.wait")
def wait_for_gate(ctx: JobContext, gate: str) -> str:
    """Block its thread until the test opens `gate`, whatever the worker says."""
    STARTED[gate].set()
    GATES[gate].wait(WAIT * 2)
    REASONS[gate] = ctx.cancel_reason
    RETURNED[gate].set()
    return "returned"


@task("sync_handlers.quick")
def quick() -> str:
    return "quick"


@task("sync_handlers.fails", retry=False)
def fails() -> None:
    raise ValueError("sync boom")


@task("sync_handlers.context")
def sees_context(ctx: JobContext) -> str:
    seen = var.get()
    SEEN.append((threading.get_ident(), seen))
    var.set(f"set by job {ctx.id}")
    ctx.log(f"saw {seen}")
    return seen


@pytest.fixture(autouse=True)
def open_every_gate() -> Iterator[None]:
    """No handler thread outlives its test (they are not daemons)."""
    yield
    for gate in GATES.values():
        gate.set()


def gate(name: str) -> dict[str, str]:
    GATES[name], STARTED[name], RETURNED[name] = (threading.Event() for _ in range(3))
    return {"gate": name}


@dataclass
class Serving:
    worker: Worker
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread

    def stop(self) -> None:
        """Stop the worker (as SIGTERM does) and wait for run() to return."""
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.worker.stop)
            self.thread.join(WAIT * 2)
            assert not self.thread.is_alive(), "the worker did not stop"


@contextmanager
def serving(db_url: str, tmp_path: Path, concurrency: int = 1, **options: Any) -> Iterator[Serving]:
    config = WorkerConfig(
        database_url=db_url,
        queues=(QUEUE,),
        concurrency=concurrency,
        settings=Settings(database_url=db_url, home=tmp_path),
        poll_interval=0.1,
        # Lost leases and cancels are seen within a fifth of a second.
        heartbeat=HeartbeatConfig(interval=0.2),
        pruner=PrunerConfig(interval=0),
        **options,
    )
    worker = Worker(config)
    loop = asyncio.new_event_loop()
    failures: list[BaseException] = []

    def main() -> None:
        try:
            loop.run_until_complete(worker.run())
        except BaseException as exc:
            failures.append(exc)
        finally:
            loop.close()

    thread = threading.Thread(target=main, name="test-worker")
    thread.start()
    serving = Serving(worker, loop, thread)
    try:
        yield serving
    finally:
        serving.stop()
    assert not failures, failures


def until(check: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def enqueue(broker: Broker, kind: str, args: dict[str, Any] | None = None, **fields: Any) -> int:
    [job] = broker.enqueue_many([JobSpec(kind, args or {}, queue=QUEUE, **fields)])
    return job.id


def state_is(broker: Broker, job_id: int, state: str) -> Callable[[], bool]:
    return lambda: broker.get_job(job_id).state == state


def events(broker: Broker, job_id: int) -> list[str]:
    return [e.event for e in broker.events(job_id)]


def test_a_timed_out_sync_handler_fails_its_job_and_frees_its_slot(
    broker: Broker, db_url: str, tmp_path: Path
) -> None:
    stuck = enqueue(broker, "sync_handlers.wait", gate("timeout"), timeout=0.3, max_attempts=1)
    with serving(db_url, tmp_path, concurrency=1) as served:
        until(state_is(broker, stuck, "failed"), "the timeout")
        # Concurrency 1 and its thread still blocked: the next job gets another thread.
        after = enqueue(broker, "sync_handlers.quick")
        until(state_is(broker, after, "succeeded"), "the next job")
        assert not RETURNED["timeout"].is_set()
        GATES["timeout"].set()
        assert RETURNED["timeout"].wait(WAIT)
        assert REASONS["timeout"] == "timeout"
        served.stop()
    job = broker.get_job(stuck)
    assert job.last_error is not None and "timed out after 0.3s" in job.last_error
    # The handler's late "returned" was never written.
    assert (job.state, job.result) == ("failed", None)
    assert events(broker, stuck) == ["enqueued", "claimed", "failed"]
    assert broker.get_job(after).result == "quick"


def test_a_sync_handlers_exception_fails_the_attempt(
    broker: Broker, db_url: str, tmp_path: Path
) -> None:
    job_id = enqueue(broker, "sync_handlers.fails")
    with serving(db_url, tmp_path):
        until(state_is(broker, job_id, "failed"), "the failure")
    job = broker.get_job(job_id)
    assert job.last_error is not None
    assert "Traceback" in job.last_error and "ValueError: sync boom" in job.last_error


def test_a_lost_lease_stops_waiting_and_never_writes_the_late_result(
    broker: Broker, db_url: str, tmp_path: Path
) -> None:
    job_id = enqueue(broker, "sync_handlers.wait", gate("lost"))
    with serving(db_url, tmp_path) as served:
        assert STARTED["lost"].wait(WAIT)
        # As if the lease had expired and another worker had claimed the job.
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(
                "UPDATE broker.jobs SET lease_epoch = lease_epoch + 1 WHERE id = %s", [job_id]
            )
        until(lambda: "stale_write_rejected" in events(broker, job_id), "the heartbeat")
        until(lambda: not served.worker._held, "the worker to drop the job")
        GATES["lost"].set()
        assert RETURNED["lost"].wait(WAIT)
        served.stop()
    assert REASONS["lost"] == "lease lost"
    after = broker.get_job(job_id)
    assert (after.state, after.lease_epoch, after.result) == ("running", 2, None)
    assert events(broker, job_id) == ["enqueued", "claimed", "stale_write_rejected"]


def test_a_cancel_of_a_running_sync_handler_is_acknowledged_at_once(
    broker: Broker, db_url: str, tmp_path: Path
) -> None:
    job_id = enqueue(broker, "sync_handlers.wait", gate("cancel"))
    with serving(db_url, tmp_path):
        assert STARTED["cancel"].wait(WAIT)
        assert broker.cancel(job_id) == "running"
        until(state_is(broker, job_id, "cancelled"), "the cancel")
        assert not RETURNED["cancel"].is_set()
        GATES["cancel"].set()
        assert RETURNED["cancel"].wait(WAIT)
    assert REASONS["cancel"] == "cancel requested"
    assert events(broker, job_id)[-2:] == ["cancel_requested", "cancelled"]
    assert broker.get_job(job_id).result is None


def test_shutdown_hands_back_a_running_sync_handlers_job(
    broker: Broker, db_url: str, tmp_path: Path
) -> None:
    job_id = enqueue(broker, "sync_handlers.wait", gate("shutdown"))
    with serving(db_url, tmp_path, shutdown_grace=0.2) as served:
        assert STARTED["shutdown"].wait(WAIT)
        served.stop()  # returns once the worker has released the job
        assert not RETURNED["shutdown"].is_set()
        assert broker.get_job(job_id).state == "queued"
        GATES["shutdown"].set()
        assert RETURNED["shutdown"].wait(WAIT)
        # The thread ends once its handler returns; nothing more is written.
        until(lambda: served.worker._threads.threads == 0, "the handler thread to end")
    assert REASONS["shutdown"] == "worker shutdown"
    assert events(broker, job_id) == ["enqueued", "claimed", "released"]
    assert broker.get_job(job_id).state == "queued"


def test_consecutive_jobs_on_one_thread_each_see_a_fresh_context(
    broker: Broker, db_url: str, tmp_path: Path
) -> None:
    SEEN.clear()
    first = enqueue(broker, "sync_handlers.context")
    with serving(db_url, tmp_path, concurrency=1):
        until(state_is(broker, first, "succeeded"), "the first job")
        second = enqueue(broker, "sync_handlers.context")
        until(state_is(broker, second, "succeeded"), "the second job")
    [(thread1, seen1), (thread2, seen2)] = SEEN
    assert thread1 == thread2
    assert (seen1, seen2) == ("unset", "unset")
    for job_id in (first, second):
        assert [line.line for line in broker.logs(job_id)] == ["saw unset"]
