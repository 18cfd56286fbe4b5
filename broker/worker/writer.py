"""Batched, fenced outcome writes: completions, failures, cancel acks, releases and log lines.

Handlers hand their outcome to the writer and free their slot at once; the writer sends
everything pending as one finish statement (broker.lease.finish), flushed after
`flush_interval` or as soon as `flush_size` outcomes wait. Log lines go first, because
they are fenced like any write and would be dropped once the job's outcome has ended its
lease. When the database is unavailable the batch is kept and retried with backoff: a
retried write that had in fact applied is rejected as stale (the job already left
`running`), never applied twice. A batch the database refuses for any other reason is
written again one outcome at a time, so a write that fails on its own is the only one
dropped (its lease then expires and the reaper moves the job on); its neighbours are
written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg

from broker import lease
from broker.errors import BrokerError, DatabaseUnavailable
from broker.lease import Finish
from broker.types import Lease, WriteOutcome
from broker.worker._conn import Backoff
from broker.worker.metrics import Metrics

if TYPE_CHECKING:
    from broker.pruner import Runner

log = logging.getLogger(__name__)

DEFAULT_FLUSH_INTERVAL = 0.002
DEFAULT_FLUSH_SIZE = 100


@dataclass(frozen=True, slots=True)
class WriterConfig:
    """Longest wait before a flush (seconds) and the batch size that flushes at once."""

    flush_interval: float = DEFAULT_FLUSH_INTERVAL
    flush_size: int = DEFAULT_FLUSH_SIZE


OnWritten = Callable[[Finish, WriteOutcome], None]


class OutcomeWriter:
    """Collects outcomes and log lines and writes them in batches on its own connection."""

    def __init__(
        self,
        conn: Runner,
        jobs_channel: str,
        on_written: OnWritten,
        config: WriterConfig | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.conn = conn
        self.config = config or WriterConfig()
        self.metrics = metrics or Metrics()
        self._jobs_channel = jobs_channel
        self._on_written = on_written
        # Keyed by job id: a newer epoch of the same job replaces an older, stale outcome.
        self._pending: dict[int, Finish] = {}
        self._logs: list[tuple[Lease, str]] = []
        self._ready = asyncio.Event()
        self._full = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.written = 0

    def submit(self, outcome: Finish) -> None:
        self._pending[outcome.lease.job_id] = outcome
        self._idle.clear()
        self._ready.set()
        if len(self._pending) >= self.config.flush_size:
            self._full.set()

    def add_log(self, held: Lease, line: str) -> None:
        self._logs.append((held, line))
        self._idle.clear()
        self._ready.set()

    def forget(self, job_id: int, epoch: int) -> None:
        """Drop a pending outcome of a lease known to be lost."""
        pending = self._pending.get(job_id)
        if pending is not None and pending.lease.epoch == epoch:
            del self._pending[job_id]

    @property
    def pending(self) -> int:
        return len(self._pending) + len(self._logs)

    async def wait_idle(self) -> None:
        """Until everything submitted so far is written (or given up)."""
        await self._idle.wait()

    async def run(self) -> None:
        """Flush forever (until cancelled)."""
        backoff = Backoff(base=0.05, cap=2.0)
        while True:
            await self._ready.wait()
            if len(self._pending) < self.config.flush_size:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.config.flush_interval)
            self._ready.clear()
            self._full.clear()
            logs, self._logs = self._logs, []
            batch, self._pending = self._pending, {}
            while True:
                try:
                    await self._write(logs, batch)
                    backoff.reset()
                    break
                except DatabaseUnavailable as exc:
                    log.warning("writer: %s; retrying", exc)
                    self.metrics.write_retried()
                    await backoff.sleep()
                    # Outcomes submitted meanwhile for the same job (a newer epoch) win.
                    for job_id in list(batch):
                        if job_id in self._pending:
                            del batch[job_id]
                except (BrokerError, psycopg.Error, ValueError) as exc:
                    log.warning("writer: a batch failed (%s); writing it one at a time", exc)
                    await self._one_by_one(logs, batch)
                    break
            if not self._pending and not self._logs:
                self._idle.set()

    async def _one_by_one(self, logs: list[tuple[Lease, str]], batch: dict[int, Finish]) -> None:
        """Write each log line and outcome on its own; drop only those that fail alone.
        If the database goes away meanwhile, the rest wait for the next flush."""
        singles: list[tuple[str, list[tuple[Lease, str]], dict[int, Finish]]] = [
            (f"a log line of job {held.job_id}", [(held, line)], {}) for held, line in logs
        ]
        singles += [
            (f"the {type(row).__name__} row of job {job_id}", [], {job_id: row})
            for job_id, row in batch.items()
        ]
        logs.clear()
        batch.clear()
        for done, (what, lines, rows) in enumerate(singles):
            try:
                await self._write(lines, rows)
            except DatabaseUnavailable:
                for _, rest_lines, rest_rows in singles[done:]:
                    self._logs.extend(rest_lines)
                    for job_id, row in rest_rows.items():
                        # An outcome submitted meanwhile for the same job (a newer epoch) wins.
                        self._pending.setdefault(job_id, row)
                self._ready.set()
                return
            except (BrokerError, psycopg.Error, ValueError):
                log.exception("writer: dropping %s", what)
                self.metrics.write_dropped()

    async def _write(self, logs: list[tuple[Lease, str]], batch: dict[int, Finish]) -> None:
        """Write `logs`, then `batch` in one finish statement; what was written is removed
        from both, so a retry after a failure sends only the rest."""
        if logs:
            await self.conn.run(lease.append_logs(logs))
            logs.clear()
        if not batch:
            return
        rows = list(batch.values())
        results = await self.conn.run(lease.finish(rows, self._jobs_channel))
        self.written += len(results)
        self.metrics.flushed(len(results))
        batch.clear()
        for row, result in zip(rows, results, strict=True):
            self._on_written(row, result)
