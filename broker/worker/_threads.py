"""The threads that run plain `def` handlers for the worker's event loop.

`HandlerThreads.call(fn, context)` runs `fn` in `context` on one of up to `size` long-lived
threads and gives its result (or exception) back to the awaiting coroutine. It replaces
`loop.run_in_executor` on the hot path because that costs, per call, a
concurrent.futures.Future, a chained asyncio future and one `call_soon_threadsafe` (a
self-pipe write and a loop wake-up), and a burst of submissions wakes one idle pool
thread per call, all of them then queueing for the GIL. Here:

- calls wait in one deque, and a submission wakes a parked thread only when no thread is
  already awake between calls; a thread that takes a call while more are waiting wakes
  one helper (unless one is awake already). A burst of no-op calls is run back to back
  by one or two threads, and a slow call still never delays the next: the helper it
  woke takes it.
- results go back in batches: a finishing thread appends to a deque, and only the first
  to append since the loop last emptied it schedules the loop's `_deliver`, so a burst of
  completions costs one wake-up.
- a caller that stops waiting (timeout, cancel, lost lease, shutdown) leaves a queued call
  dropped, or a running one abandoned: a thread cannot be interrupted, so its late result
  is thrown away, and the thread no longer counts against `size` (one more may start), so
  a stuck handler never takes a slot from the jobs after it. At most `size` such extra
  threads: past that, new calls wait for a thread to come back, as they all did before.

docs/decisions/026-sync-dispatch.md has the measurements.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)

# A call's states; all changes happen under HandlerThreads._lock.
_QUEUED, _RUNNING, _DONE, _DROPPED = range(4)


class _Call:
    __slots__ = ("abandoned", "context", "fn", "future", "state")

    def __init__(
        self, fn: Callable[[], Any], context: contextvars.Context, future: asyncio.Future[Any]
    ) -> None:
        self.fn = fn
        self.context = context
        self.future = future
        self.state = _QUEUED
        # The caller stopped waiting while the call ran: its result goes nowhere.
        self.abandoned = False


class HandlerThreads:
    """Up to `size` threads, plus one per abandoned call still running (at most `size`
    more), running sync calls for one loop.

    Threads start on demand and park when there is nothing to run; they are not daemons,
    so the process waits for a handler still running at exit (broker.worker.command
    gives them a grace period). `call` must be awaited on the loop's thread.
    """

    def __init__(self, size: int, name: str = "broker-task") -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self.size = size
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: deque[_Call] = deque()
        # Wake-up locks of parked threads; the last parked (warmest) is woken first.
        self._parked: list[threading.Lock] = []
        # Threads awake and between calls (woken or started, not yet holding a call).
        self._looking = 0
        # Threads still running a call nobody waits for.
        self._abandoned = 0
        self._threads: set[threading.Thread] = set()
        self._started = 0
        self._results: deque[tuple[_Call, Any, BaseException | None]] = deque()
        self._delivery_due = False
        self._closing = False

    @property
    def threads(self) -> int:
        """How many threads exist now (running, looking or parked)."""
        return len(self._threads)

    async def call(self, fn: Callable[[], T], context: contextvars.Context) -> T:
        """`context.run(fn)` on a handler thread: its result, or the exception it raised.

        Cancelling the awaiting task stops the wait at once: a call not yet started never
        starts, and the result of one already running is discarded.
        Raises RuntimeError after `shutdown`.
        """
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        work = _Call(fn, context, loop.create_future())
        self._submit(work)
        try:
            result: T = await work.future
        except asyncio.CancelledError:
            self._stop_waiting(work)
            raise
        return result

    def shutdown(self, wait: bool = False, *, cancel_futures: bool = True) -> None:
        """Let every thread end once it has nothing to run (Executor.shutdown's shape).

        `cancel_futures` drops the calls not yet started (their awaiting tasks get
        CancelledError); `wait` joins the threads, including ones still running a
        handler. Call it on the loop's thread.
        """
        with self._lock:
            self._closing = True
            if cancel_futures:
                for work in self._pending:
                    if work.state == _QUEUED:
                        work.state = _DROPPED
                        work.future.cancel()
                self._pending.clear()
            while self._parked:
                self._looking += 1
                self._parked.pop().release()
            threads = list(self._threads)
        if wait:
            for thread in threads:
                thread.join()

    # --- the loop's side (called under no lock) -------------------------------------------

    def _submit(self, work: _Call) -> None:
        with self._lock:
            if self._closing:
                raise RuntimeError("handler threads are shut down")
            self._pending.append(work)
            if not self._looking:
                self._wake_one()
            if not self._threads:
                # Not even one thread could start: nothing would ever run this call.
                self._pending.pop()
                raise RuntimeError("no handler thread could be started")

    def _stop_waiting(self, work: _Call) -> None:
        with self._lock:
            if work.state == _QUEUED:
                work.state = _DROPPED
            elif work.state == _RUNNING and not work.abandoned:
                work.abandoned = True
                self._abandoned += 1
                if self._abandoned == self.size:
                    log.warning(
                        "%d sync handlers the worker stopped waiting for still run on their"
                        " threads; each one more now takes a thread from the sync jobs",
                        self._abandoned,
                    )
                # Its thread serves no one now: let another take what waits.
                if self._pending and not self._looking:
                    self._wake_one()

    def _deliver(self) -> None:
        with self._lock:
            self._delivery_due = False
            done, self._results = self._results, deque()
        for work, result, exc in done:
            future = work.future
            if future.done():  # the caller stopped waiting after the call returned
                continue
            if exc is None:
                future.set_result(result)
            else:
                future.set_exception(exc)

    # --- the threads' side ----------------------------------------------------------------

    def _wake_one(self) -> None:
        """Under the lock: wake a parked thread, or start one if there is room."""
        if self._parked:
            self._looking += 1
            self._parked.pop().release()
        elif len(self._threads) < self.size + min(self._abandoned, self.size):
            self._looking += 1
            wake = threading.Lock()
            wake.acquire()
            thread = threading.Thread(
                target=self._serve, args=(wake,), name=f"{self._name}_{self._started}"
            )
            self._started += 1
            self._threads.add(thread)
            try:
                thread.start()
            except RuntimeError as exc:  # the process is out of threads
                self._looking -= 1
                self._threads.discard(thread)
                log.warning("could not start another handler thread: %s", exc)

    def _take(self) -> _Call | None:
        """Under the lock: the next call to run, waking a helper if more are waiting."""
        pending = self._pending
        while pending:
            work = pending.popleft()
            # A cancelled future is read from this thread on purpose (a plain state read):
            # the task awaiting it learns of its cancellation, and drops the call, only on
            # the loop's next iteration.
            if work.state != _QUEUED or work.future.cancelled():
                continue
            work.state = _RUNNING
            self._looking -= 1
            if pending and not self._looking:
                self._wake_one()
            return work
        return None

    def _serve(self, wake: threading.Lock) -> None:
        # Whoever started this thread counted it as looking.
        lock = self._lock
        while True:
            with lock:
                work = self._take()
                if work is None:
                    self._looking -= 1
                    if self._closing or len(self._threads) > self.size + self._abandoned:
                        self._threads.discard(threading.current_thread())
                        return
                    self._parked.append(wake)
            if work is None:
                wake.acquire()  # until _wake_one or shutdown releases it
                continue
            result: Any = None
            exc: BaseException | None = None
            try:
                result = work.context.run(work.fn)
            except StopIteration as stop:
                # An asyncio future cannot hold StopIteration (nor can a coroutine raise it).
                exc = RuntimeError("handler raised StopIteration")
                exc.__cause__ = stop
            except BaseException as raised:
                exc = raised
            with lock:
                work.state = _DONE
                self._looking += 1
                if work.abandoned:
                    self._abandoned -= 1
                    continue
                self._results.append((work, result, exc))
                due = not self._delivery_due
                self._delivery_due = True
            del result, exc, work
            if due:
                self._schedule_delivery()

    def _schedule_delivery(self) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:
            # The loop is closed: nobody waits for these results any more.
            with self._lock:
                self._results.clear()
                self._delivery_due = False
