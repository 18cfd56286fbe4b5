"""Group commit for single enqueues: concurrent POST /v1/jobs share one statement.

Every enqueue commits with a NOTIFY, and PostgreSQL serializes notifying commits, so one
statement per request caps throughput however many connections there are. Requests that
arrive while a flush is in flight wait for the next one and go together: one enqueue
statement, one commit, one NOTIFY per queue, one read of the created rows. No request
waits on a timer; with one client the path is the same as calling the broker directly.
Each caller still gets its answer only after its job is committed. The statement is the
routed enqueue (broker.routing): a request that names no queue gets the one the live
workers declare for its kind, and every answer carries its warnings.

A group's enqueue is one statement, so when it fails nothing of it was committed, and it
is replayed one job at a time (whatever the error: a bad job, an idempotency conflict, an
error nobody foresaw), so every caller gets the answer its own request deserves and a bad
request never fails a good neighbour. Only an unreachable database fails the whole group.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Sequence
from dataclasses import dataclass

from psycopg import errors as pg_errors

from broker import AsyncBroker, JobSpec, lease, routing, tracing
from broker.errors import DatabaseUnavailable
from broker.types import Enqueued, Job

MAX_GROUP = 500
# A lost idempotency race asks for a retry with serialization_failure; it is safe to repeat.
ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class Created:
    """An enqueued job as stored, and whether this request created it."""

    job: Job
    created: bool
    # From the routed enqueue: e.g. that no live worker serves the job's queue.
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _Pending:
    client: AsyncBroker
    spec: JobSpec
    # The request named no queue: the routed enqueue chooses it (broker.routing).
    unnamed: bool
    scope: str | None
    future: asyncio.Future[Created]


async def enqueue_many(
    client: AsyncBroker,
    specs: Sequence[JobSpec],
    unnamed: Sequence[bool],
    scope: str | None = None,
) -> list[Enqueued]:
    """Enqueue `specs` in one routed statement (keys within `scope`; the queue of each
    spec flagged in `unnamed` chosen by broker.routing, each result with its warnings),
    repeating on a lost idempotency race."""
    # One producer span for the statement (broker.tracing), its context in each job's meta.
    with tracing.enqueue_span(list(specs)) as traced:
        for attempt in range(ATTEMPTS):
            try:
                return await client.run(routing.enqueue_routed(traced, unnamed, scope))
            except pg_errors.SerializationFailure:
                if attempt == ATTEMPTS - 1:
                    raise
    raise AssertionError("unreachable")


class EnqueueBatcher:
    """Combines concurrent single enqueues into shared statements (see the module doc)."""

    def __init__(self, max_group: int = MAX_GROUP) -> None:
        self.max_group = max_group
        self._pending: list[_Pending] = []
        self._draining: asyncio.Task[None] | None = None

    async def enqueue(
        self, client: AsyncBroker, spec: JobSpec, scope: str | None, unnamed: bool = False
    ) -> Created:
        """Enqueue one job (its idempotency key within `scope`; its queue routed when
        `unnamed`) and read it back. Raises what the broker raises for it alone."""
        future: asyncio.Future[Created] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(client, spec, unnamed, scope, future))
        if self._draining is None or self._draining.done():
            # A fresh context: the flush serves every waiting request, so it must not run
            # in the first one's (a trace span of that request would parent them all).
            self._draining = asyncio.create_task(self._drain(), context=contextvars.Context())
        # shield: a client that disconnects must not cancel the flush others wait on.
        return await asyncio.shield(future)

    async def _drain(self) -> None:
        while self._pending:
            group = self._next_group()
            try:
                enqueued = await enqueue_many(
                    group[0].client,
                    [p.spec for p in group],
                    [p.unnamed for p in group],
                    group[0].scope,
                )
            except Exception as exc:  # nothing of the group was committed
                if len(group) == 1 or isinstance(exc, DatabaseUnavailable):
                    for pending in group:
                        _settle(pending.future, exc=exc)
                else:
                    await self._one_by_one(group)
                continue
            await self._answer(group, enqueued)

    def _next_group(self) -> list[_Pending]:
        """Up to max_group pending requests that can share a statement (same client and
        idempotency scope), oldest first; the rest wait for the next flush."""
        first = self._pending[0]
        group: list[_Pending] = []
        rest: list[_Pending] = []
        for pending in self._pending:
            same = pending.client is first.client and pending.scope == first.scope
            (group if same and len(group) < self.max_group else rest).append(pending)
        self._pending = rest
        return group

    async def _one_by_one(self, group: list[_Pending]) -> None:
        for pending in group:
            try:
                enqueued = await enqueue_many(
                    pending.client, [pending.spec], [pending.unnamed], pending.scope
                )
            except Exception as exc:
                _settle(pending.future, exc=exc)
            else:
                await self._answer([pending], enqueued)

    @staticmethod
    async def _answer(group: list[_Pending], enqueued: list[Enqueued]) -> None:
        """Read the committed jobs back for their callers. The jobs exist whatever happens
        here, so a failure is reported, never answered by enqueueing again."""
        try:
            found = await group[0].client.run(lease.get_jobs([e.id for e in enqueued]))
        except Exception as exc:
            for pending in group:
                _settle(pending.future, exc=exc)
            return
        jobs = {j.id: j for j in found}
        for pending, result in zip(group, enqueued, strict=True):
            _settle(
                pending.future,
                result=Created(jobs[result.id], result.created, result.warnings),
            )


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
