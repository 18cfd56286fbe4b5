"""Sync handler dispatch without a database: run_in_executor against HandlerThreads.

    python bench/sync_dispatch.py [--calls 50000] [--concurrency 100] [--rounds 5]
                                  [--claim-latency 0] [--work 0]

Each way runs `--calls` no-op plain `def` calls the way the worker does: one asyncio task
per job, started in batches sized to the free slots (`--concurrency`), each awaiting its
call in a copied contextvars context. `--claim-latency` (seconds) sleeps between batches
as a claim's round trip would (the loop then waits in epoll, without the GIL); `--work`
makes each call busy-wait that many microseconds. The two ways alternate, `--rounds`
times each, and the median calls/s of each and their ratio are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import functools
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

from broker.worker._threads import HandlerThreads

Dispatch = Callable[[Callable[[], object]], Awaitable[object]]


def handler(work: float) -> None:
    if work:
        end = time.perf_counter() + work
        while time.perf_counter() < end:
            pass


async def drive(
    dispatch: Dispatch, calls: int, concurrency: int, latency: float, work: float
) -> float:
    """Seconds to run `calls` jobs through `dispatch` with `concurrency` slots."""
    free = asyncio.Event()
    active = 0
    tasks: set[asyncio.Task[None]] = set()
    fn = functools.partial(handler, work)

    async def job() -> None:
        nonlocal active
        try:
            await dispatch(fn)
        finally:
            active -= 1
            free.set()

    start = time.perf_counter()
    started = 0
    while started < calls:
        room = concurrency - active
        if room <= 0:
            free.clear()
            await free.wait()
            continue
        batch = min(room, calls - started)
        for _ in range(batch):
            task = asyncio.create_task(job())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        active += batch
        started += batch
        await asyncio.sleep(latency)  # the claim's round trip
    while tasks:
        await asyncio.wait(set(tasks))
    return time.perf_counter() - start


async def executor_round(calls: int, concurrency: int, latency: float, work: float) -> float:
    loop = asyncio.get_running_loop()
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="bench-old")

    def dispatch(fn: Callable[[], object]) -> Awaitable[object]:
        return loop.run_in_executor(pool, contextvars.copy_context().run, fn)

    try:
        return await drive(dispatch, calls, concurrency, latency, work)
    finally:
        pool.shutdown(wait=True)


async def threads_round(calls: int, concurrency: int, latency: float, work: float) -> float:
    threads = HandlerThreads(concurrency, "bench-new")

    def dispatch(fn: Callable[[], object]) -> Awaitable[object]:
        return threads.call(fn, contextvars.copy_context())

    try:
        return await drive(dispatch, calls, concurrency, latency, work)
    finally:
        threads.shutdown(wait=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--claim-latency", type=float, default=0.0)
    parser.add_argument("--work", type=float, default=0.0, help="microseconds of work per call")
    args = parser.parse_args()
    ways = {"run_in_executor": executor_round, "HandlerThreads": threads_round}
    rates: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, way in ways.items():
            seconds = asyncio.run(
                way(args.calls, args.concurrency, args.claim_latency, args.work / 1e6)
            )
            rates[name].append(args.calls / seconds)
    for name, got in rates.items():
        each = [round(r) for r in got]
        print(f"{name:16} median {statistics.median(got):>9,.0f} calls/s, rounds {each}")
    ratio = statistics.median(rates["HandlerThreads"]) / statistics.median(rates["run_in_executor"])
    print(
        f"HandlerThreads / run_in_executor: {ratio:.2f}x ({args.calls} calls, concurrency"
        f" {args.concurrency}, claim latency {args.claim_latency}s, work {args.work}us,"
        f" switch interval {sys.getswitchinterval()}s)"
    )


if __name__ == "__main__":
    main()
