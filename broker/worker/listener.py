"""The worker's LISTEN connection: wake-ups for new jobs and cancel requests.

One dedicated connection per process LISTENs on the jobs and cancel channels. It pings
itself between notifications so a silently dead connection is noticed within
`ping_interval + ping_timeout`, reconnects with backoff, LISTENs again, and then reports
a reconnect so the worker claims at once (notifications sent meanwhile were lost). After
each LISTEN a probe (broker/_listen_probe.py) proves that notifications arrive at all,
and warns once when they do not (a transaction pooler in between: BROKER_LISTEN_URL).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from broker._listen_probe import ListenProbe
from broker._queries import queries
from broker.config import Settings
from broker.worker._conn import Backoff, connect

log = logging.getLogger(__name__)

DEFAULT_PING_INTERVAL = 2.0
DEFAULT_PING_TIMEOUT = 3.0


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    """How often the idle LISTEN connection proves it is alive, and how long it may take."""

    ping_interval: float = DEFAULT_PING_INTERVAL
    ping_timeout: float = DEFAULT_PING_TIMEOUT


class Listener:
    """Dispatches notifications: `on_jobs(queue)`, `on_cancel(job_id)`, `on_connected()`."""

    def __init__(
        self,
        url: str,
        settings: Settings,
        on_jobs: Callable[[str], None],
        on_cancel: Callable[[int], None],
        on_connected: Callable[[], None],
        config: ListenerConfig | None = None,
    ) -> None:
        self.url = url
        self.settings = settings
        self.config = config or ListenerConfig()
        self._jobs_channel = settings.jobs_channel
        self._cancel_channel = settings.cancel_channel
        self._listen = queries(settings.schema)["worker_listen"]
        self._ping = queries(settings.schema)["worker_ping"]
        self._on_jobs = on_jobs
        self._on_cancel = on_cancel
        self._on_connected = on_connected
        self.connects = 0
        self.application_name = "broker listen"

    async def run(self) -> None:
        """Listen until cancelled, reconnecting after every failure."""
        backoff = Backoff(base=0.05, cap=2.0)
        while True:
            conn: psycopg.AsyncConnection[Any] | None = None
            try:
                conn = await self._connect()
                # Executed without parameters: the DO block is sent as is.
                await conn.execute(self._listen)
                probe = ListenProbe(
                    self._connect_probe,
                    self.settings,
                    "new jobs wait for the next poll (--poll-interval) and cancels for the"
                    " next heartbeat",
                )
                self.connects += 1
                if self.connects > 1:
                    log.info("listener reconnected")
                self._on_connected()
                backoff.reset()
                await probe.send()
                await self._pump(conn, probe)
            except (psycopg.Error, OSError, TimeoutError) as exc:
                log.warning("listener connection lost: %s", str(exc).strip() or type(exc))
            finally:
                if conn is not None:
                    await _close(conn)
            await backoff.sleep()

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        return await connect(self.url, self.application_name, self.settings.prepare_threshold)

    async def _connect_probe(self) -> psycopg.AsyncConnection[Any]:
        return await connect(self.url, "broker probe", self.settings.prepare_threshold)

    async def _pump(self, conn: psycopg.AsyncConnection[Any], probe: ListenProbe) -> None:
        while True:
            async for notify in conn.notifies(timeout=self.config.ping_interval):
                if not probe.heard(notify):
                    self._dispatch(notify)
            probe.check()
            await asyncio.wait_for(conn.execute(self._ping), self.config.ping_timeout)

    def _dispatch(self, notify: psycopg.Notify) -> None:
        if notify.channel == self._jobs_channel:
            self._on_jobs(notify.payload)
        elif notify.channel == self._cancel_channel:
            try:
                job_id = int(notify.payload)
            except ValueError:
                log.warning("ignoring cancel notification %r", notify.payload)
                return
            self._on_cancel(job_id)


async def _close(conn: psycopg.AsyncConnection[Any]) -> None:
    try:
        await asyncio.wait_for(conn.close(), 1.0)
    except Exception:
        log.debug("closing the listener connection failed", exc_info=True)
