"""broker._executor: every statement, sync or async, single or a COPY sequence, reaches
the observers by name, and errors are translated once for all of them."""

from __future__ import annotations

import asyncio

import pytest

from broker import AsyncBroker, Broker, JobNotFound, JobSpec
from broker import _executor as executor
from broker._copy import COPY_MIN_BATCH


@pytest.fixture
def seen() -> list[tuple[str, str | None]]:
    calls: list[tuple[str, str | None]] = []

    def observer(name: str, seconds: float, error: BaseException | None) -> None:
        assert seconds >= 0
        calls.append((name, type(error).__name__ if error else None))

    remove = executor.observe(observer)
    yield calls
    remove()


def test_sync_statements_copy_steps_and_errors_are_observed(
    broker: Broker, seen: list[tuple[str, str | None]]
) -> None:
    broker.enqueue("k")
    broker.enqueue("k", queue="named")
    broker.enqueue_many([JobSpec("k") for _ in range(COPY_MIN_BATCH)])
    broker.claim(["default"], 5, "w:1")
    with pytest.raises(JobNotFound):
        broker.retry(10**12)
    assert seen == [
        # One plain job; no queue named and no task imported: the registry routes, in the
        # same statement.
        ("job_enqueue_one_routed", None),
        # A queue named: the registry is not read at all.
        ("job_enqueue_one", None),
        ("job_copy_reserve", None),
        ("job_copy_jobs", None),
        ("job_copy_events", None),
        ("job_claim", None),
        ("job_retry", "JobNotFound"),
    ]


def test_async_statements_are_observed_the_same_way(
    db_url: str, seen: list[tuple[str, str | None]]
) -> None:
    async def main() -> None:
        async with await AsyncBroker.connect(db_url) as client:
            await client.enqueue_many([JobSpec("k") for _ in range(COPY_MIN_BATCH)])
            leases = await client.claim(["default"], 2, "w:1")
            await client.complete_many([(lease, None) for lease in leases])
            with pytest.raises(JobNotFound):
                await client.cancel(10**12)

    asyncio.run(main())
    assert [name for name, _ in seen] == [
        "job_copy_reserve",
        "job_copy_jobs",
        "job_copy_events",
        "job_claim",
        "job_finish_many",
        "job_cancel",
    ]
    assert seen[-1] == ("job_cancel", "JobNotFound")
