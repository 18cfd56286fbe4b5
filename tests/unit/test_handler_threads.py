"""broker.worker._threads without a database: results and exceptions come back, each call
runs in its own context, a slow call never delays another, a caller that stops waiting
never gets a late result (a queued call never starts, a running one is abandoned and a
thread takes its place), and shutdown ends every thread."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest

from broker.worker._threads import HandlerThreads

T = TypeVar("T")
WAIT = 5.0
var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")


@pytest.fixture
def gates() -> Iterator[list[threading.Event]]:
    """Events handlers block on; all set at the end so no thread outlives the test."""
    made: list[threading.Event] = []
    yield made
    for gate in made:
        gate.set()


def gate(gates: list[threading.Event]) -> threading.Event:
    event = threading.Event()
    gates.append(event)
    return event


def run(scenario: Callable[[HandlerThreads], Awaitable[T]], size: int = 2) -> T:
    threads = HandlerThreads(size, "test-task")

    async def main() -> T:
        try:
            return await asyncio.wait_for(scenario(threads), WAIT)
        finally:
            threads.shutdown()

    return asyncio.run(main())


def call(threads: HandlerThreads, fn: Callable[[], T]) -> Awaitable[T]:
    return threads.call(fn, contextvars.copy_context())


def test_results_and_exceptions_come_back() -> None:
    def fails() -> None:
        raise ValueError("boom")

    def stops() -> None:
        raise StopIteration

    async def scenario(threads: HandlerThreads) -> None:
        assert await call(threads, lambda: 42) == 42
        with pytest.raises(ValueError, match="boom"):
            await call(threads, fails)
        # An asyncio future cannot carry StopIteration; it arrives as RuntimeError.
        with pytest.raises(RuntimeError, match="StopIteration"):
            await call(threads, stops)

    run(scenario)


def test_each_call_runs_in_its_own_context_even_on_the_same_thread() -> None:
    def first() -> tuple[int, str]:
        seen = var.get()
        var.set("set by the first call")
        return threading.get_ident(), seen

    def second() -> tuple[int, str]:
        return threading.get_ident(), var.get()

    async def scenario(threads: HandlerThreads) -> None:
        var.set("the caller's")
        ident1, seen1 = await call(threads, first)
        ident2, seen2 = await call(threads, second)
        assert ident1 == ident2 != threading.get_ident()
        assert (seen1, seen2) == ("the caller's", "the caller's")
        assert var.get() == "the caller's"

    run(scenario, size=1)


def test_a_burst_of_calls_all_complete_on_few_threads() -> None:
    async def scenario(threads: HandlerThreads) -> int:
        results = await asyncio.gather(*(call(threads, lambda i=i: i) for i in range(2000)))
        assert results == list(range(2000))
        return threads.threads

    assert 1 <= run(scenario, size=50) <= 50


def test_a_slow_call_does_not_delay_the_next(gates: list[threading.Event]) -> None:
    slow = gate(gates)

    async def scenario(threads: HandlerThreads) -> None:
        blocked = asyncio.ensure_future(call(threads, slow.wait))
        assert await call(threads, lambda: "quick") == "quick"
        assert not blocked.done()
        slow.set()
        assert await blocked is True

    run(scenario, size=2)


def test_a_queued_call_whose_caller_stopped_waiting_never_runs(
    gates: list[threading.Event],
) -> None:
    busy = gate(gates)
    ran: list[str] = []

    async def scenario(threads: HandlerThreads) -> None:
        first = asyncio.ensure_future(call(threads, busy.wait))
        await asyncio.sleep(0.05)
        queued = asyncio.ensure_future(call(threads, lambda: ran.append("queued")))
        await asyncio.sleep(0.05)
        queued.cancel()
        busy.set()
        assert await first is True
        with pytest.raises(asyncio.CancelledError):
            await queued
        # One more call on the only thread: the dropped one was skipped, not run.
        await call(threads, lambda: None)

    run(scenario, size=1)
    assert ran == []


def test_an_abandoned_call_gives_up_its_thread(gates: list[threading.Event]) -> None:
    stuck = gate(gates)
    returned = threading.Event()

    def hangs() -> str:
        stuck.wait()
        returned.set()
        return "late"

    async def scenario(threads: HandlerThreads) -> None:
        waiting = asyncio.ensure_future(call(threads, hangs))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        # size 1, its thread stuck: another starts for the next call.
        assert await call(threads, lambda: "next") == "next"
        assert threads.threads == 2
        stuck.set()
        await asyncio.to_thread(returned.wait, WAIT)
        # The late result went nowhere; back to one thread once the stuck one is free.
        for _ in range(100):
            if threads.threads == 1:
                break
            await asyncio.sleep(0.01)
        assert threads.threads == 1
        assert await call(threads, lambda: "after") == "after"

    run(scenario, size=1)


def test_shutdown_ends_the_threads_and_refuses_new_calls() -> None:
    threads = HandlerThreads(3, "test-task")

    async def main() -> None:
        await asyncio.gather(*(call(threads, lambda: None) for _ in range(10)))
        threads.shutdown(wait=True)
        assert threads.threads == 0
        assert not [t for t in threading.enumerate() if t.name.startswith("test-task")]
        with pytest.raises(RuntimeError, match="shut down"):
            await call(threads, lambda: None)

    asyncio.run(main())


def test_shutdown_cancels_calls_not_yet_started(gates: list[threading.Event]) -> None:
    busy = gate(gates)

    async def scenario(threads: HandlerThreads) -> Any:
        first = asyncio.ensure_future(call(threads, busy.wait))
        await asyncio.sleep(0.05)
        queued = asyncio.ensure_future(call(threads, lambda: "never"))
        await asyncio.sleep(0.05)
        threads.shutdown(cancel_futures=True)
        busy.set()
        assert await first is True
        with pytest.raises(asyncio.CancelledError):
            await queued

    run(scenario, size=1)


def test_a_result_arriving_after_the_loop_closed_is_dropped(
    gates: list[threading.Event],
) -> None:
    # A handler outliving its worker's loop (still running at exit): no error anywhere.
    stuck = gate(gates)
    threads = HandlerThreads(1, "test-task")
    done = threading.Event()

    def hangs() -> str:
        stuck.wait()
        done.set()
        return "late"

    async def main() -> None:
        waiting = asyncio.ensure_future(call(threads, hangs))
        await asyncio.sleep(0.05)
        assert not waiting.done()  # asyncio.run cancels it on the way out

    asyncio.run(main())
    stuck.set()
    assert done.wait(WAIT)
    threads.shutdown(wait=True)
    assert threads.threads == 0


def test_a_thread_that_cannot_start_leaves_the_call_to_the_threads_there_are(
    gates: list[threading.Event], monkeypatch: pytest.MonkeyPatch
) -> None:
    busy = gate(gates)

    def cannot_start(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    async def scenario(threads: HandlerThreads) -> None:
        first = asyncio.ensure_future(call(threads, busy.wait))
        await asyncio.sleep(0.05)
        with monkeypatch.context() as patched:
            patched.setattr(threading.Thread, "start", cannot_start)
            second = asyncio.ensure_future(call(threads, lambda: "second"))
            await asyncio.sleep(0.05)
            assert threads.threads == 1 and not second.done()
            # With no thread at all, a call fails at once rather than waiting forever.
            with pytest.raises(RuntimeError, match="no handler thread"):
                await call(HandlerThreads(1, "test-none"), lambda: None)
        busy.set()
        assert await first is True
        assert await second == "second"

    run(scenario, size=2)


def test_abandoned_calls_add_at_most_size_threads(
    gates: list[threading.Event], caplog: pytest.LogCaptureFixture
) -> None:
    first, second = gate(gates), gate(gates)

    async def abandon(threads: HandlerThreads, stuck: threading.Event) -> None:
        waiting = asyncio.ensure_future(call(threads, stuck.wait))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting

    async def scenario(threads: HandlerThreads) -> None:
        await abandon(threads, first)
        await abandon(threads, second)  # ran on the one extra thread size 1 allows
        assert threads.threads == 2
        third = asyncio.ensure_future(call(threads, lambda: "third"))
        await asyncio.sleep(0.05)
        assert threads.threads == 2 and not third.done()
        first.set()  # its thread comes back and takes the waiting call
        assert await third == "third"

    run(scenario, size=1)
    assert "stopped waiting for still run" in caplog.text
