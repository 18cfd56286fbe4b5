"""Following a job's log as it is written: every line once, in commit order, woken by
NOTIFY (decision 023).

`follow_logs` is the one follower: the REST API's event stream (GET /v1/jobs/{id}/logs
with follow), the operator UI's live log and `broker jobs logs --follow` all iterate it.
It reads lines "after id N", which is exact because a job's line ids are in commit order
(log_append_many locks the job's row before a line takes its id, so a job's appends
commit one after the other). A follower registers in broker.job_waiters, committed before
its first read; from then on every append of a line of the job notifies `<schema>_logs`,
and the job's end notifies `<schema>_done` (the jobs trigger sends it for registered
jobs). With nobody following, appends notify nothing. `LogWatch` is one LISTEN connection
per AsyncBroker for all its followers; a notification only wakes a follower, which then
reads, so a lost one costs at most `poll` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import psycopg

from broker import lease
from broker._queries import queries
from broker.config import Settings
from broker.errors import JobNotFound
from broker.types import TERMINAL_STATES, LogLine
from broker.waiting import CONNECT_TIMEOUT, ListenLoop, parse_ids

if TYPE_CHECKING:
    from broker.client import AsyncBroker

log = logging.getLogger("broker.follow")

# A follower reads again after this long even without a notification (one lost while the
# LISTEN connection was being replaced).
FALLBACK_POLL_SECONDS = 5.0
# Lines read per query; a full page is followed by the next at once.
PAGE_SIZE = 1000
# A follower's registration lasts this long and is renewed at half of it; one left behind
# by a follower that died expires on its own.
REGISTRATION_SECONDS = 3600.0
# How often an idle LISTEN connection proves it is alive.
PING_SECONDS = 30.0


class LogWatch(ListenLoop):
    """Wakes the followers of job ids, for one async process, from one LISTEN connection
    (opened on the first follower, reopened after a failure; every follower is woken then,
    since notifications may have been lost meanwhile)."""

    task_name = "broker log watch"
    lost = "log watch connection lost"

    def __init__(
        self,
        connect: Callable[[], Awaitable[psycopg.AsyncConnection[Any]]],
        settings: Settings,
    ) -> None:
        super().__init__(connect)
        self._settings = settings
        self._queries = queries(settings.schema)
        self._followers: dict[int, set[asyncio.Event]] = {}

    @contextlib.asynccontextmanager
    async def watching(self, job_id: int) -> AsyncIterator[asyncio.Event]:
        """An event set whenever `job_id` may have new lines or has ended; the connection
        listens before this yields (or has failed, and then the fallback poll serves)."""
        await self._started()
        woken = asyncio.Event()
        self._followers.setdefault(job_id, set()).add(woken)
        try:
            yield woken
        finally:
            followers = self._followers.get(job_id, set())
            followers.discard(woken)
            if not followers:
                self._followers.pop(job_id, None)

    @property
    def following(self) -> int:
        """How many followers are watching (for tests)."""
        return sum(len(f) for f in self._followers.values())

    async def close(self) -> None:
        await self._stop()
        self._wake_all()

    async def _listen(self, conn: psycopg.AsyncConnection[Any], ready: asyncio.Event) -> None:
        await conn.execute(self._queries["logs_listen"])
        ready.set()
        # Whatever was appended while no connection listened is read now.
        self._wake_all()
        channels = {self._settings.logs_channel, self._settings.done_channel}
        while True:
            async for notify in conn.notifies(timeout=PING_SECONDS):
                if notify.channel in channels:
                    self._wake(parse_ids(notify.payload))
            await asyncio.wait_for(conn.execute("SELECT 1"), CONNECT_TIMEOUT)

    def _wake(self, ids: list[int]) -> None:
        for job_id in ids:
            for woken in self._followers.get(job_id, ()):
                woken.set()

    def _wake_all(self) -> None:
        for followers in self._followers.values():
            for woken in followers:
                woken.set()


async def follow_logs(
    client: AsyncBroker,
    job_id: int,
    after: int = 0,
    *,
    poll: float = FALLBACK_POLL_SECONDS,
) -> AsyncIterator[LogLine]:
    """Yield the log lines of `job_id` with ids above `after`, in commit order, each once,
    as they are written, until the job is terminal and every line of it has been yielded
    (a job deleted meanwhile ends it too). Woken by NOTIFY; reads at least every `poll`
    seconds. Raises JobNotFound if the job does not exist when following starts.

    Resuming is `follow_logs(client, job_id, after=<id of the last line seen>)`: ids of one
    job are in commit order, so no line is skipped or repeated."""
    await client.get_job(job_id)
    loop = asyncio.get_running_loop()
    async with client.log_watch().watching(job_id) as woken:
        registrations: list[int] = []
        registered_at = 0.0
        try:
            while True:
                if not registrations or loop.time() - registered_at > REGISTRATION_SECONDS / 2:
                    # Committed before the read below: a line appended after it notifies.
                    renewed = await client.run(lease.wait_register([job_id], REGISTRATION_SECONDS))
                    if registrations:
                        await client.run(lease.wait_unregister(registrations))
                    registrations, registered_at = renewed, loop.time()
                woken.clear()
                # The state before the lines: once a finished state has been read, every
                # line of the job is committed (an append waits for a concurrent finish and
                # is then refused), so the read that follows sees them all.
                try:
                    job = await client.get_job(job_id)
                except JobNotFound:
                    return
                lines = await client.logs(job_id, after, PAGE_SIZE)
                for line in lines:
                    after = line.id
                    yield line
                if len(lines) == PAGE_SIZE:
                    continue
                if job.state in TERMINAL_STATES:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), poll)
        finally:
            if registrations:
                # Left behind (the database is away), it expires on its own.
                with contextlib.suppress(Exception):
                    await client.run(lease.wait_unregister(registrations))
