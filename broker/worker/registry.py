"""Worker identity and the broker.workers registry: host id, worker id, liveness, clock skew.

worker_id is `host_id:seq`. The host id is a UUID kept in a file under the state
directory (BROKER_STATE_DIR, default BROKER_HOME/state), so a restarted worker keeps
its id. One live process per id: on one host an exclusive file lock proves it (the
kernel drops the lock when a process dies, even by SIGKILL, so a restart is never
refused by a crashed predecessor); across hosts (a copied state directory) the
registry row's last_seen, in database time, does. `Registration` is one process's
life in the registry: identity, registering (with the clock-skew check), last_seen, stop.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import psycopg

from broker import lease
from broker.config import Settings, user_state_dir
from broker.errors import BrokerError, DatabaseUnavailable
from broker.lease import Row, Statement
from broker.task import registered
from broker.worker._conn import Backoff

if TYPE_CHECKING:
    from broker.pruner import Runner

log = logging.getLogger(__name__)

HOST_ID_FILE = "host_id"
# Marking the row stopped at exit must not hold up the exit when the database is away.
UNREGISTER_TIMEOUT = 3.0


class WorkerIdInUse(BrokerError):
    """Another live process already runs with this worker id."""


class ClockSkewTooLarge(BrokerError):
    """This host's clock differs from the database's by more than --max-clock-skew."""


def state_dir(settings: Settings) -> Path:
    """Where worker identity lives: BROKER_STATE_DIR, else the per-user state directory
    (broker.config.user_state_dir), whatever the working directory or BROKER_HOME."""
    return settings.state_dir if settings.state_dir is not None else user_state_dir()


def load_host_id(directory: Path) -> uuid.UUID:
    """The host id stored in `directory`, created (atomically) on first use."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / HOST_ID_FILE
    try:
        return uuid.UUID(path.read_text(encoding="utf-8").strip())
    except FileNotFoundError:
        pass
    candidate = uuid.uuid4()
    tmp = directory / f".{HOST_ID_FILE}.{os.getpid()}.tmp"
    tmp.write_text(f"{candidate}\n", encoding="utf-8")
    try:
        # link() fails if another process created the file first; then theirs wins.
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return uuid.UUID(path.read_text(encoding="utf-8").strip())


def worker_id_for(host_id: uuid.UUID, seq: int) -> str:
    """The worker id of process number `seq` on this host."""
    return f"{host_id}:{seq}"


class IdentityLock:
    """An exclusive lock on one worker id on this host, held for the process's life."""

    def __init__(self, directory: Path, seq: int) -> None:
        self.path = directory / f"worker-{seq}.lock"
        self._fd: int | None = None

    def acquire(self, worker_id: str) -> None:
        """Take the lock or raise WorkerIdInUse naming the pid that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise WorkerIdInUse(
                f"worker id {worker_id} is already in use by a live process (pid {holder})"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass(frozen=True, slots=True)
class RegisteredWorker:
    """A registry row as seen before registering."""

    worker_id: str
    hostname: str
    pid: int
    live: bool


@dataclass(frozen=True, slots=True)
class ClockReading:
    """The database clock read at a known local time: skew = database - local, seconds."""

    skew: float
    round_trip: float


def skew_from(db_time: datetime, sent: float, received: float) -> ClockReading:
    """Skew of this host's clock against `db_time`, read between local `sent` and `received`."""
    local_mid = (sent + received) / 2
    return ClockReading(db_time.timestamp() - local_mid, received - sent)


# --- statements --------------------------------------------------------------------------


def get(worker_id: str, ttl: float) -> Statement[RegisteredWorker | None]:
    """The registry row for `worker_id`; `live` when not stopped and seen within `ttl`."""

    def decode(rows: list[Row]) -> RegisteredWorker | None:
        return RegisteredWorker(*rows[0]) if rows else None

    return Statement("worker_get", {"worker_id": worker_id, "ttl": ttl}, decode)


def register(
    worker_id: str,
    host_id: uuid.UUID,
    seq: int,
    queues: list[str],
    concurrency: int,
    version: str,
    clock_skew: float | None,
    meta: dict[str, Any] | None = None,
) -> Statement[datetime]:
    """Upsert this worker's row for a new run; returns the database clock."""
    params = {
        "worker_id": worker_id,
        "host_id": str(host_id),
        "seq": seq,
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "queues": queues,
        "concurrency": concurrency,
        "version": version,
        "clock_skew": clock_skew,
        "meta": msgspec.json.encode(meta or {}).decode(),
    }
    return Statement("worker_register", params, lambda rows: rows[0][1])


def seen(worker_id: str, clock_skew: float | None) -> Statement[datetime | None]:
    """Refresh last_seen; returns the database clock (None if the row is gone)."""
    return Statement(
        "worker_seen",
        {"worker_id": worker_id, "clock_skew": clock_skew},
        lambda rows: rows[0][1] if rows else None,
    )


def stopped(worker_id: str) -> Statement[bool]:
    """Mark this process's run of `worker_id` stopped."""
    return Statement(
        "worker_stopped", {"worker_id": worker_id, "pid": os.getpid()}, lambda rows: bool(rows)
    )


# --- one process's registration ---------------------------------------------------------


class Registration:
    """This process's row in broker.workers: its worker id (held by a file lock), its
    clock's skew against the database's, refreshed last_seen, and the stop mark.

    `runner` is the connection statements go through (the worker's heartbeat one).
    """

    def __init__(
        self,
        runner: Runner,
        settings: Settings,
        *,
        seq: int,
        queues: Sequence[str],
        concurrency: int,
        version: str,
        lease_ttl: float,
        max_clock_skew: float | None,
    ) -> None:
        self.runner = runner
        self.settings = settings
        self.seq = seq
        self.queues = list(queues)
        self.concurrency = concurrency
        self.version = version
        self.lease_ttl = lease_ttl
        self.max_clock_skew = max_clock_skew
        self.worker_id = ""
        self.skew: float | None = None
        # Whether the last measured skew was beyond the tolerance (and warned about).
        self.skewed = False
        self._host_id: uuid.UUID | None = None
        self._lock: IdentityLock | None = None

    def take_identity(self) -> str:
        """Load (or create) the host id and lock this seq's worker id; returns it.
        Raises WorkerIdInUse when a live process on this host holds it."""
        directory = state_dir(self.settings)
        self._host_id = load_host_id(directory)
        self.worker_id = worker_id_for(self._host_id, self.seq)
        self._lock = IdentityLock(directory, self.seq)
        self._lock.acquire(self.worker_id)
        return self.worker_id

    async def register(self, stopping: asyncio.Event) -> None:
        """Measure the clock skew and upsert the row, retrying while the database is
        unavailable (unless `stopping` is set). Raises WorkerIdInUse when the id is live on
        another host, ClockSkewTooLarge beyond max_clock_skew."""
        backoff = Backoff(base=0.2, cap=5.0)
        while True:
            try:
                await self._register_once()
                return
            except DatabaseUnavailable as exc:
                if stopping.is_set():
                    raise
                log.warning("cannot register worker (%s); retrying", exc)
                await backoff.sleep()

    async def _register_once(self) -> None:
        assert self._host_id is not None, "take_identity() first"
        sent = time.time()
        db_time = await self.runner.run(lease.db_clock())
        self._check_skew(skew_from(db_time, sent, time.time()).skew, starting=True)
        existing = await self.runner.run(get(self.worker_id, self.lease_ttl))
        if existing is not None and existing.live and existing.hostname != socket.gethostname():
            raise WorkerIdInUse(
                f"worker id {self.worker_id} is live on host {existing.hostname} "
                f"(pid {existing.pid}); is this state directory shared?"
            )
        await self.runner.run(
            register(
                self.worker_id,
                self._host_id,
                self.seq,
                self.queues,
                self.concurrency,
                self.version,
                self.skew,
                # The queue each task declares: enqueuers that import no task code route
                # by it (broker.routing).
                {
                    "kinds": sorted(registered()),
                    "task_queues": {k: t.queue for k, t in sorted(registered().items())},
                },
            )
        )

    async def seen(self) -> None:
        """Refresh last_seen and measure the skew again (warning beyond the tolerance)."""
        sent = time.time()
        db_time = await self.runner.run(seen(self.worker_id, self.skew))
        if db_time is not None:
            self._check_skew(skew_from(db_time, sent, time.time()).skew)

    def _check_skew(self, skew: float, *, starting: bool = False) -> None:
        self.skew = skew
        limit = self.max_clock_skew
        if starting and limit is not None and abs(skew) > limit:
            raise ClockSkewTooLarge(
                f"clock differs from the database's by {skew:+.3f}s (limit {limit}s)"
            )
        # Said once per change (every heartbeat measures it): beyond the tolerance, then
        # back within it.
        skewed = abs(skew) > self.settings.clock_skew_tolerance
        if skewed and not self.skewed:
            log.warning(
                "clock differs from the database's by %+.3fs (tolerance %ss); leases use "
                "the database clock, but timestamps in logs will disagree",
                skew,
                self.settings.clock_skew_tolerance,
                extra={"clock_skew": skew},
            )
        elif self.skewed and not skewed:
            log.info(
                "clock back within %ss of the database's (%+.3fs)",
                self.settings.clock_skew_tolerance,
                skew,
                extra={"clock_skew": skew},
            )
        self.skewed = skewed

    async def unregister(self) -> None:
        """Mark the row stopped; a failure is logged, never raised (the row then ages)."""
        try:
            await asyncio.wait_for(self.runner.run(stopped(self.worker_id)), UNREGISTER_TIMEOUT)
        except (BrokerError, psycopg.Error, TimeoutError) as exc:
            log.warning("could not mark the worker stopped: %s", exc)

    def release(self) -> None:
        """Give up the worker id's lock (the kernel does it too when the process dies)."""
        if self._lock is not None:
            self._lock.release()
