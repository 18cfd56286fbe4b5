"""Whether NOTIFY reaches a LISTEN connection, proved once per connection.

Behind a transaction pooler (PgBouncer's `pool_mode = transaction`) a LISTEN lasts only as
long as its transaction: the server connection that ran it goes back to the pool, and
the client never hears a notification. Nothing fails; wake-ups just stop, and the broker
falls back to what it does when a notification is lost (workers poll, cancels ride on
the heartbeat, waits sweep). So after each LISTEN the listener sends a token of its own
to `<schema>_probe` from a second connection to the same URL; if the token has not come
back within `PROBE_TIMEOUT` seconds, one warning says so and names the fix
(BROKER_LISTEN_URL, docs/scaling.md).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

from broker import _executor as executor
from broker.config import Settings
from broker.lease import Statement

log = logging.getLogger(__name__)

# A notification to a session of its own arrives in milliseconds; this much longer means
# it never will.
PROBE_TIMEOUT = 5.0


def probe(token: str) -> Statement[None]:
    """NOTIFY the probe channel with `token`."""
    return Statement("listen_probe", {"token": token}, lambda rows: None, prepare=False)


class ListenProbe:
    """One probe of one LISTEN connection. `send()` after the LISTEN, `heard(notify)` for
    every notification (True: it was a probe's, not for the caller), `check()` now and
    then: it warns once when the token is overdue.

    `connect` opens the second connection (to the same URL as the LISTEN's); `fallback`
    says in the warning what takes over from notifications."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[psycopg.AsyncConnection[Any]]],
        settings: Settings,
        fallback: str,
        timeout: float = PROBE_TIMEOUT,
    ) -> None:
        self._connect = connect
        self._schema = settings.schema
        self._channel = settings.probe_channel
        self._fallback = fallback
        self._timeout = timeout
        self._token = secrets.token_hex(8)
        self._deadline: float | None = None
        self.reached: bool | None = None  # None: not known (yet)

    async def send(self) -> None:
        """Send the token; a failure to send leaves the outcome unknown (no warning)."""
        try:
            conn = await asyncio.wait_for(self._connect(), self._timeout)
            try:
                await executor.arun(conn, probe(self._token), self._schema)
            finally:
                await conn.close()
        except (psycopg.Error, OSError, TimeoutError) as exc:
            log.debug("could not send the LISTEN probe: %s", exc)
            return
        self._deadline = time.monotonic() + self._timeout

    def heard(self, notify: psycopg.Notify) -> bool:
        if notify.channel != self._channel:
            return False
        if notify.payload == self._token:
            self.reached = True
        return True

    def check(self) -> None:
        if self.reached is not None or self._deadline is None:
            return
        if time.monotonic() >= self._deadline:
            self.reached = False
            log.warning(
                "notifications do not reach the LISTEN connection (a transaction pooler in"
                " between?): set BROKER_LISTEN_URL to a direct URL; until then %s",
                self._fallback,
            )
