"""The worker's stop cancels its services until each has ended (runtime.cancel_all)."""

from __future__ import annotations

import asyncio

from broker.worker.runtime import cancel_all


def test_a_service_that_loses_its_first_cancellation_still_stops() -> None:
    """A service whose cancellation is lost once (as Python 3.11's wait_for can lose it)
    and goes on waiting is cancelled again, so the stop ends instead of waiting forever."""

    async def scenario() -> tuple[int, bool]:
        lost = 0

        async def service() -> None:
            nonlocal lost
            while True:
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    if lost:
                        raise
                    lost += 1  # swallowed: the service carries on

        async def plain() -> None:
            await asyncio.sleep(3600)

        tasks = [asyncio.create_task(service()), asyncio.create_task(plain())]
        await asyncio.sleep(0)
        await asyncio.wait_for(cancel_all(tasks, every=0.05), 5)
        return lost, all(t.cancelled() for t in tasks)

    assert asyncio.run(scenario()) == (1, True)
