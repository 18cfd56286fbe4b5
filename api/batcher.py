"""Group commit for single enqueues: concurrent POST /v1/jobs share one statement.

Every enqueue commits with a NOTIFY, and PostgreSQL serializes notifying commits, so one
statement per request caps throughput however many connections there are. Requests that
arrive while a flush is in flight wait for the next one and go together: one enqueue
statement, one commit, one NOTIFY per queue, one read of the created rows. No request
waits on a timer; with one client the path is the same as calling the broker directly.
Each caller still gets its answer only after its job is committed.

A flush that fails because of one bad job (invalid, idempotency conflict) is replayed
one job at a time, so every caller gets the answer its own request deserves.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from psycopg import errors as pg_errors

from broker import AsyncBroker, BrokerError, JobSpec, lease
from broker.errors import DatabaseUnavailable
from broker.lease import Enqueued, Job

MAX_GROUP = 500
# A lost idempotency race asks for a retry with serialization_failure; it is safe to repeat.
ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class Created:
    """An enqueued job as stored, and whether this request created it."""

    job: Job
    created: bool


async def enqueue_many(client: AsyncBroker, specs: list[JobSpec]) -> list[Enqueued]:
    """Enqueue `specs` in one statement, repeating on a lost idempotency race."""
    for attempt in range(ATTEMPTS):
        try:
            return await client.enqueue_many(specs)
        except pg_errors.SerializationFailure:
            if attempt == ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


class EnqueueBatcher:
    """Combines concurrent single enqueues into shared statements (see the module doc)."""

    def __init__(self, max_group: int = MAX_GROUP) -> None:
        self.max_group = max_group
        self._pending: list[tuple[AsyncBroker, JobSpec, asyncio.Future[Created]]] = []
        self._draining: asyncio.Task[None] | None = None

    async def enqueue(self, client: AsyncBroker, spec: JobSpec) -> Created:
        """Enqueue one job and read it back. Raises what the broker raises for it alone."""
        future: asyncio.Future[Created] = asyncio.get_running_loop().create_future()
        self._pending.append((client, spec, future))
        if self._draining is None or self._draining.done():
            self._draining = asyncio.create_task(self._drain())
        # shield: a client that disconnects must not cancel the flush others wait on.
        return await asyncio.shield(future)

    async def _drain(self) -> None:
        while self._pending:
            group, self._pending = (
                self._pending[: self.max_group],
                self._pending[self.max_group :],
            )
            client = group[0][0]
            try:
                results = await self._flush(client, [spec for _, spec, _ in group])
            except (BrokerError, pg_errors.SerializationFailure) as exc:
                if len(group) == 1 or isinstance(exc, DatabaseUnavailable):
                    for _, _, future in group:
                        _settle(future, exc=exc)
                    continue
                await self._one_by_one(client, group)
                continue
            except Exception as exc:  # reported to every waiting caller, never lost
                for _, _, future in group:
                    _settle(future, exc=exc)
                continue
            for (_, _, future), result in zip(group, results, strict=True):
                _settle(future, result=result)

    async def _one_by_one(
        self,
        client: AsyncBroker,
        group: list[tuple[AsyncBroker, JobSpec, asyncio.Future[Created]]],
    ) -> None:
        for _, spec, future in group:
            try:
                (result,) = await self._flush(client, [spec])
            except Exception as exc:
                _settle(future, exc=exc)
            else:
                _settle(future, result=result)

    async def _flush(self, client: AsyncBroker, specs: list[JobSpec]) -> list[Created]:
        enqueued = await enqueue_many(client, specs)
        jobs = {j.id: j for j in await client.run(lease.get_jobs([e.id for e in enqueued]))}
        return [Created(jobs[e.id], e.created) for e in enqueued]


def _settle(
    future: asyncio.Future[Created],
    result: Created | None = None,
    exc: BaseException | None = None,
) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    elif result is not None:
        future.set_result(result)
