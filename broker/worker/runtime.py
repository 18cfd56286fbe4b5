"""The worker runtime: claims jobs into free slots, runs their handlers, reports outcomes.

One asyncio loop per process, and three connections (decision 025): the claim loop (here)
shares `lease` with heartbeats (heartbeat.py) and the registry row, whose statements are
all short; the outcome writer (writer.py), the reaper (reaper.py), the pruner
(broker/pruner.py) and the scheduler (scheduler.py) take turns on `work`, so no slow
write or prune can delay a beat or a claim; the LISTEN connection is listener.py's.
Identity and the registry row are registry.py's, and what a handler's return or
exception means is _outcome.py's. Async handlers run on the loop, sync handlers on
_threads.py's handler threads, as many as the concurrency.

Local rules that keep the database's fencing honest: a lease reported lost (by a
heartbeat, or by a rejected write) stops its handler and its outcome is discarded; a
requested cancel stops the handler and acknowledges with `cancel_ack`; at shutdown
unfinished handlers are stopped and their leases released (queued again, attempt not
counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg

from broker import lease, tracing
from broker import spec as contract
from broker.errors import BrokerError
from broker.lease import Finish
from broker.pruner import Runner, run_pruner
from broker.task import JobContext, Task, declared_schedules, get_task
from broker.types import Lease, StopReason, WriteOutcome
from broker.worker import _joblog, _outcome, registry
from broker.worker._conn import Backoff, Connection
from broker.worker._threads import HandlerThreads
from broker.worker.config import WorkerConfig
from broker.worker.heartbeat import Heartbeat
from broker.worker.listener import Listener
from broker.worker.metrics import Metrics
from broker.worker.reaper import Reaper
from broker.worker.scheduler import Scheduler
from broker.worker.wakeups import Wakeups
from broker.worker.writer import OutcomeWriter

log = logging.getLogger(__name__)

# After the grace period, released leases still need their release written.
DEFAULT_FINAL_WRITE_TIMEOUT = 10.0
SERVICE_RESTART_DELAY = 1.0
# How long tasks still running once the worker has stopped get to end after they are
# cancelled (LoopRun).
LEFTOVER_GRACE = 2.0


@dataclass(eq=False)
class _Held:
    """A lease this process holds: its handler, and whether its outcome is on the way."""

    lease: Lease
    task: Task | None
    ctx: JobContext
    handle: asyncio.Task[None] | None = None
    # Whether the handler's task has taken its first step. A task cancelled before that
    # never runs its coroutine at all (no finally, no outcome, its slot never freed), so
    # a stop until then only sets the reason, which the first step reads.
    started: bool = False
    stop_reason: StopReason | None = None
    finished: bool = False
    # Seconds the handler ran, once it returned (or was stopped).
    duration: float | None = None

    def stop(self, reason: StopReason) -> None:
        if self.finished or self.stop_reason is not None:
            return
        self.stop_reason = reason
        self.ctx._cancel(reason)
        if self.handle is not None and self.started:
            self.handle.cancel()


class ServiceConnection(Runner, Protocol):
    """What each service runs its statements on (`_conn.Connection`, or a test's fake)."""

    name: str
    application_name: str

    async def close(self) -> None: ...


# Connection name -> that connection: "lease" (claims, heartbeats and the registry row)
# and "work" (outcome writes, the reaper, the pruner, the scheduler).
ConnectionFactory = Callable[[str], ServiceConnection]


async def cancel_all(tasks: list[asyncio.Task[Any]], every: float = 1.0) -> None:
    """Cancel `tasks` and wait until all have ended, cancelling again every `every`
    seconds: one cancellation can be lost. Python 3.11's asyncio.wait_for returns the
    inner result when it completes just as the task is cancelled, so the listener, opening
    its probe connection as the worker stopped, went on listening and the stop waited for
    it forever (a worker stopped just after it started, under load)."""
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=every)


class LoopRun:
    """Runs a coroutine on a new event loop, as asyncio.run does, but never waits forever
    for what it leaves behind. The tasks still running when it returns (a handler that
    ignored its cancellation, stopped and handed back by the worker's drain) are
    cancelled once more and given `grace` seconds; asyncio.run waited for them without
    end, and the stopped worker never exited. The loop's default executor (asyncio.to_thread,
    getaddrinfo) is shut down without waiting, for the same reason: a thread still running
    a blocking call would be joined for as long as it runs. `ended` says whether every
    task ended, also after `main` raised; when not, the loop is left open and the caller
    should exit without waiting (the executor's threads are not daemons either, so a
    caller that waits for threads at exit sees them)."""

    def __init__(self, grace: float = LEFTOVER_GRACE) -> None:
        self.grace = grace
        self.ended = True

    def run(self, main: Coroutine[Any, Any, None]) -> None:
        loop = asyncio.new_event_loop()
        executor = ThreadPoolExecutor(thread_name_prefix="asyncio")
        loop.set_default_executor(executor)
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(main)
        finally:
            self.ended = loop.run_until_complete(_end_leftovers(self.grace))
            executor.shutdown(wait=False, cancel_futures=True)
            if self.ended:
                loop.run_until_complete(loop.shutdown_asyncgens())
                asyncio.set_event_loop(None)
                loop.close()


async def _end_leftovers(grace: float) -> bool:
    current = asyncio.current_task()
    left = [task for task in asyncio.all_tasks() if task is not current]
    for task in left:
        task.cancel()
    if not left:
        return True
    done, pending = await asyncio.wait(left, timeout=grace)
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            log.error("a task failed as the worker stopped", exc_info=task.exception())
    if pending:
        log.warning(
            "%d task(s) still running %.0fs after their cancellation (a handler that"
            " ignores it?); not waiting for them",
            len(pending),
            grace,
        )
    return not pending


class Worker:
    """One worker process's runtime. `await worker.run()` until `stop()` (or a signal).

    `connect` makes the "lease" and "work" connections (default: a `_conn.Connection`
    to config.database_url); a test passes fakes to drive the runtime without PostgreSQL.
    `metrics` receives what happens (broker.worker.metrics; default: recorded nowhere).
    """

    def __init__(
        self,
        config: WorkerConfig,
        connect: ConnectionFactory | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.settings = config.settings
        self.worker_id = ""
        self._held: dict[int, _Held] = {}
        self._active = 0
        self._wake = asyncio.Event()
        self._slot_free = asyncio.Event()
        self._stopping = asyncio.Event()
        self._hurry = asyncio.Event()
        self._handlers: set[asyncio.Task[None]] = set()
        self._threads = HandlerThreads(config.concurrency, "broker-task")
        if connect is None:
            connect = functools.partial(
                Connection,
                config.database_url,
                self.settings.schema,
                prepare_threshold=self.settings.prepare_threshold,
            )
        self._leases = connect("lease")
        self._work = connect("work")
        # The scheduler needs transactions, which a test's fake connections do not give.
        self.scheduler: Scheduler | None = None
        if isinstance(self._work, Connection) and config.scheduler.enabled:
            self.scheduler = Scheduler(self._work, declared_schedules(), config.scheduler)
        self.writer = OutcomeWriter(
            self._work, self.settings.jobs_channel, self._written, config.writer, self.metrics
        )
        self.reaper = Reaper(self._work, config.reaper)
        self.wakeups = Wakeups(self._leases, config.queues)
        self.registration = registry.Registration(
            self._leases,
            self.settings,
            seq=config.seq,
            queues=config.queues,
            concurrency=config.concurrency,
            version=config.version,
            lease_ttl=config.lease_ttl,
            max_clock_skew=config.max_clock_skew,
        )
        self.heartbeat = Heartbeat(
            self._leases,
            self.registration,
            config.lease_ttl,
            config.heartbeat,
            leases=self._unfinished_leases,
            unwritten=self._unwritten_leases,
            on_lost=self._lease_lost,
            on_cancel=self._on_cancel,
            supervisor_pid=config.supervisor_pid,
            on_orphaned=self._orphaned,
        )
        self.listener = Listener(
            # Direct when BROKER_LISTEN_URL says the database URL is a transaction pooler.
            self.settings.listen_target(config.database_url),
            self.settings,
            on_jobs=self._on_jobs,
            on_cancel=self._on_cancel,
            on_connected=self._wake.set,
            config=config.listener,
        )
        self.claimed = 0

    # --- lifecycle ----------------------------------------------------------------------

    def stop(self) -> None:
        """Stop claiming and drain: a first call starts the grace period, a second ends it."""
        if self._stopping.is_set():
            log.warning("second stop request: releasing running jobs now")
            self._hurry.set()
        else:
            log.info("stopping: no new claims; waiting up to %ss", self.config.shutdown_grace)
            self._stopping.set()
        self._wake.set()
        self._slot_free.set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)

    async def run(self) -> None:
        """Register, serve until stopped, drain, hand back what is left, unregister.

        Raises WorkerIdInUse or ClockSkewTooLarge before serving anything.
        """
        self._loop = asyncio.get_running_loop()
        await self._register()
        services = [
            asyncio.create_task(self._service("listener", self.listener.run)),
            asyncio.create_task(self._service("writer", self.writer.run)),
            asyncio.create_task(self._service("heartbeat", self.heartbeat.run)),
            asyncio.create_task(self._service("reaper", self.reaper.run)),
        ]
        if self.config.pruner.enabled:
            # Once a minute by default, one bounded batch per statement, on the shared
            # connection: claims and writes wait at most one batch behind it.
            prune = functools.partial(run_pruner, self._work, self.config.pruner)
            services.append(asyncio.create_task(self._service("pruner", prune)))
        if self.scheduler is not None:
            self.scheduler.worker_id = self.worker_id
            services.append(asyncio.create_task(self._service("scheduler", self.scheduler.run)))
        log.info(
            "worker %s serving %s with concurrency %d",
            self.worker_id,
            ",".join(self.config.queues),
            self.config.concurrency,
        )
        try:
            await self._claim_loop()
            await self._drain()
        finally:
            await cancel_all(services)
            await self.wakeups.stop()
            await self.registration.unregister()
            for conn in (self._leases, self._work):
                await conn.close()
            self._threads.shutdown(wait=False, cancel_futures=True)
            self.registration.release()
            log.info("worker %s stopped", self.worker_id)

    @staticmethod
    async def _service(name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Run a background service; a bug that escapes it is logged and the service
        restarted, because a worker without heartbeats or writes would lose every lease."""
        while True:
            try:
                await run()
                return
            except Exception:
                log.exception("%s service crashed; restarting it", name)
                await asyncio.sleep(SERVICE_RESTART_DELAY)

    async def _register(self) -> None:
        self.worker_id = self.registration.take_identity()
        self.wakeups.worker_id = self.worker_id
        for conn in (self._leases, self._work):
            conn.application_name = f"broker {conn.name} {self.worker_id}"
        self.listener.application_name = f"broker listen {self.worker_id}"
        await self.registration.register(self._stopping)

    # --- claims -------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        backoff = Backoff(base=0.05, cap=self.config.poll_interval * 5)
        # How soon to claim again while an enqueue is in flight as we register.
        settle = Backoff(base=0.002, cap=self.config.poll_interval)
        full = 0  # consecutive claims that filled every free slot
        queues = list(self.config.queues)
        while not self._stopping.is_set():
            free = self.config.concurrency - self._active
            if free <= 0:
                self._slot_free.clear()
                await self._slot_free.wait()
                continue
            self._wake.clear()
            try:
                leases = await self._leases.run(
                    lease.claim(queues, free, self.worker_id, self.config.lease_ttl)
                )
            except (BrokerError, psycopg.Error) as exc:
                log.warning("claim failed: %s", exc)
                await self._wait(self._stopping, backoff.next())
                continue
            except Exception:
                # A bug must not end the claim loop silently while jobs keep running.
                log.exception("claim failed")
                await self._wait(self._stopping, backoff.next())
                continue
            backoff.reset()
            self.claimed += len(leases)
            self.metrics.claimed(len(leases))
            self._accept(leases)
            if leases:
                if len(leases) < free:
                    # Slots are left, so the next claim goes out at once: the handlers just
                    # started run to their first await before it does. Sending one can hold
                    # this process as long as the server takes to run it when the two share
                    # a core, most of a pickup's delay from claim to handler (decision 029).
                    # A full claim needs no turn: the loop waits for a free slot anyway.
                    await asyncio.sleep(0)
                # Two full claims in a row: a backlog, not a trickle that happens to fill
                # the free slots (one slot, one job), so enqueues need not wake us.
                full = full + 1 if len(leases) == free else 0
                if full >= 2:
                    await self._claimed_full()
                continue
            full = 0
            # The queues are drained for now: sleep until a notification or the poll.
            # A short batch is not proof of that (other workers' claims hold rows that
            # SKIP LOCKED passes over), so only an empty one sends us to sleep, and only
            # once enqueues know we wait (broker/worker/wakeups.py).
            if await self._may_sleep():
                # Never past the registration's refresh, with a long poll interval.
                sleep = min(self.config.poll_interval, self.wakeups.refresh_in())
                await self._wait(self._wake, sleep)
            elif self.wakeups.settled:
                settle.reset()  # registered and settled: one more claim at once
            else:
                await self._wait(self._wake, settle.next())

    async def _may_sleep(self) -> bool:
        try:
            return await self.wakeups.may_sleep()
        except (BrokerError, psycopg.Error) as exc:
            # Without a registration only the poll wakes us: as before decision 028.
            log.warning("registering as a waiting worker failed: %s", exc)
            return True

    async def _claimed_full(self) -> None:
        try:
            await self.wakeups.busy()
        except (BrokerError, psycopg.Error) as exc:
            # Still registered: enqueues keep notifying, which costs them, not us.
            log.warning("leaving the waiting workers failed: %s", exc)

    def _accept(self, leases: list[Lease]) -> None:
        """Start a handler for every claimed lease. The claim has committed, so no lease is
        ever dropped here: a job whose args this process cannot decode is failed, saying
        why, and one that cannot be started is handed back."""
        runnable, unreadable = lease.split_unreadable(leases)
        for held_lease, failure in unreadable:
            log.warning("job %s: %s", held_lease.job_id, failure.error)
            self.writer.submit(lease.failed(held_lease, failure))
        for held_lease in runnable:
            try:
                self._start(held_lease)
            except Exception:
                log.exception("job %s: its handler did not start; released", held_lease.job_id)
                self._held.pop(held_lease.job_id, None)
                self.writer.submit(lease.released(held_lease))

    @staticmethod
    async def _wait(event: asyncio.Event, timeout: float) -> None:
        # asyncio.timeout, not wait_for: wait_for (before 3.12) runs event.wait() in a task
        # of its own, two more turns of the loop between set() and this claim loop.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await event.wait()

    def _on_jobs(self, queue: str) -> None:
        if queue in self.config.queues:
            self._wake.set()

    def _on_cancel(self, job_id: int) -> None:
        held = self._held.get(job_id)
        if held is not None:
            log.info("job %s: cancel requested", job_id)
            held.stop(StopReason.CANCEL)

    # --- running handlers ---------------------------------------------------------------

    def _start(self, held_lease: Lease) -> None:
        previous = self._held.get(held_lease.job_id)
        if previous is not None:
            # We claimed a newer epoch of a job we still track: the old lease is stale.
            self._lost(previous)
        ctx = JobContext(
            id=held_lease.job_id,
            attempt=held_lease.attempt,
            epoch=held_lease.epoch,
            kind=held_lease.kind,
            queue=held_lease.queue,
            worker_id=self.worker_id,
            _log=functools.partial(self._log_line, held_lease),
            _loop=self._loop,
        )
        held = _Held(held_lease, get_task(held_lease.kind), ctx)
        self._held[held_lease.job_id] = held
        self._active += 1
        handle = asyncio.create_task(self._run_job(held))
        held.handle = handle
        # _run_job takes itself out as it ends (a done callback would be one more turn
        # of the loop per job).
        self._handlers.add(handle)

    def _log_line(self, held_lease: Lease, line: str) -> None:
        held = self._held.get(held_lease.job_id)
        if held is not None and held.lease.epoch == held_lease.epoch and not held.finished:
            self.writer.add_log(held_lease, contract.storable_text(line))

    async def _run_job(self, held: _Held) -> None:
        held.started = True
        try:
            outcome = await self._outcome_of(held)
            try:
                self.metrics.ran(held.lease, held.duration or 0.0, outcome)
            except Exception:
                # Never at the cost of the outcome: unwritten, its lease is beaten on.
                log.exception("job %s: recording its run failed", held.lease.job_id)
            if outcome is None:
                self._drop(held)
            else:
                self.writer.submit(outcome)
        finally:
            # The running task, not held.handle: under an eager task factory this body
            # can end inside create_task, before the handle is stored.
            self._handlers.discard(asyncio.current_task())

    async def _outcome_of(self, held: _Held) -> Finish | None:
        """Run the handler, unless it was stopped before it could start (a cancel heard
        between the claim and this task's first step), and say how its attempt ends."""
        outcome: Finish | None
        started = self._loop.time()
        try:
            if held.stop_reason is not None:
                return _outcome.stopped(held.lease, held.stop_reason)
            with tracing.run_span(held.lease) as span:
                outcome = await self._invoke(held)
                tracing.ended(span, outcome)
        except asyncio.CancelledError:
            outcome = _outcome.stopped(held.lease, held.stop_reason)
        finally:
            held.duration = self._loop.time() - started
            held.finished = True
            self._active -= 1
            self._slot_free.set()
        return outcome

    async def _invoke(self, held: _Held) -> Finish:
        task, job = held.task, held.lease
        if task is None:
            return _outcome.outcome(task, job, worker_id=self.worker_id)
        kwargs: dict[str, Any] = dict(job.args)
        if task.wants_ctx:
            kwargs["ctx"] = held.ctx
        timeout = _outcome.timeout_for(task, job)
        # A timer rather than asyncio.timeout(): the stop reason must be set before the
        # handler sees its cancellation, so it (and its ctx) can tell a timeout apart.
        timer = (
            self._loop.call_later(timeout, held.stop, StopReason.TIMEOUT)
            if timeout is not None
            else None
        )
        try:
            if task.is_async:
                result = await task.fn(**kwargs)
            else:
                call = functools.partial(task.fn, **kwargs)
                result = await self._threads.call(call, contextvars.copy_context())
        except asyncio.CancelledError:
            if held.stop_reason == StopReason.TIMEOUT and timeout is not None:
                raised = _outcome.TimedOut(timeout)
                return _outcome.outcome(task, job, raised=raised, worker_id=self.worker_id)
            raise
        except Exception as exc:
            tracing.raised(exc)
            return _outcome.outcome(task, job, raised=exc, worker_id=self.worker_id)
        finally:
            if timer is not None:
                timer.cancel()
        return _outcome.outcome(task, job, result, worker_id=self.worker_id)

    # --- outcomes and lost leases --------------------------------------------------------

    def _written(self, row: Finish, outcome: WriteOutcome) -> None:
        self.metrics.written(row, outcome)
        held_lease = row.lease
        held = self._held.get(held_lease.job_id)
        duration = None
        if held is not None and held.lease.epoch == held_lease.epoch:
            duration = held.duration
            del self._held[held_lease.job_id]
        # One line per outcome (INFO, or WARNING for a write rejected as stale).
        _joblog.outcome_written(row, outcome, duration)

    def _drop(self, held: _Held) -> None:
        current = self._held.get(held.lease.job_id)
        if current is held:
            del self._held[held.lease.job_id]

    def _lost(self, held: _Held) -> None:
        self.metrics.lease_lost()
        log.warning(
            "job %s epoch %s: lease lost; stopping its handler", held.lease.job_id, held.lease.epoch
        )
        self.writer.forget(held.lease.job_id, held.lease.epoch)
        self._drop(held)
        held.stop(StopReason.LOST)

    # --- heartbeats ---------------------------------------------------------------------

    def _unfinished_leases(self) -> list[Lease]:
        # Leases whose outcome is already on its way are beaten apart (_unwritten_leases).
        return [h.lease for h in self._held.values() if not h.finished]

    def _unwritten_leases(self) -> list[Lease]:
        # Finished, outcome not written yet: the write can wait behind a prune batch or
        # the reaper on the shared connection longer than the lease TTL, and a lease left
        # to expire meanwhile is reaped and its job run again. Beaten by a statement that
        # skips rows locked at that moment, so a write held up on a row lock (an
        # operator's, or the write's own) never holds up the beat of the other leases.
        return [h.lease for h in self._held.values() if h.finished]

    def _lease_lost(self, lost: Lease) -> None:
        held = self._held.get(lost.job_id)
        if held is not None and held.lease.epoch == lost.epoch and not held.finished:
            self._lost(held)

    def _orphaned(self) -> None:
        if not self._stopping.is_set():
            log.warning("supervisor %s is gone; stopping", self.config.supervisor_pid)
            self.stop()

    # --- shutdown -----------------------------------------------------------------------

    async def _drain(self) -> None:
        if self._active:
            log.info("waiting for %d running job(s)", self._active)
            grace = asyncio.create_task(self._all_finished())
            hurry = asyncio.create_task(self._hurry.wait())
            await asyncio.wait(
                {grace, hurry},
                timeout=self.config.shutdown_grace,
                return_when=asyncio.FIRST_COMPLETED,
            )
            grace.cancel()
            hurry.cancel()
        unfinished = [h for h in self._held.values() if not h.finished]
        if unfinished:
            log.info("handing back %d unfinished job(s)", len(unfinished))
            for held in unfinished:
                held.stop(StopReason.SHUTDOWN)
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=DEFAULT_FINAL_WRITE_TIMEOUT)
        try:
            await asyncio.wait_for(self.writer.wait_idle(), DEFAULT_FINAL_WRITE_TIMEOUT)
        except TimeoutError:
            log.error(
                "gave up writing %d outcome(s); their leases will expire and be reaped",
                self.writer.pending,
            )

    async def _all_finished(self) -> None:
        while self._active:
            self._slot_free.clear()
            await self._slot_free.wait()
