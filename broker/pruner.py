"""Retention: delete finished jobs (with their events and logs) once they are older than
their state's retention, in bounded batches, one process at a time (advisory-lock leader).

Workers run it in the background (`run_pruner`); `broker prune` runs it once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import psycopg

from broker._durations import parse_duration
from broker._executor import adrive, drive
from broker.client import Broker
from broker.errors import BrokerError, ConfigError
from broker.lease import Statement

log = logging.getLogger("broker.pruner")
T = TypeVar("T")

DEFAULT_RETENTION: Mapping[str, float] = {
    "succeeded": 24 * 3600.0,  # one day
    "cancelled": 7 * 24 * 3600.0,  # a week
    "failed": 14 * 24 * 3600.0,  # two weeks: failures are what people come back to read
}
DEFAULT_BATCH = 1000
DEFAULT_MAX_BATCHES = 100  # per state per run, so one run stays bounded
DEFAULT_INTERVAL = 60.0


@dataclass(frozen=True)
class PrunerConfig:
    """Retention per finished state (seconds), batch size and pacing."""

    retention: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_RETENTION))
    batch: int = DEFAULT_BATCH
    max_batches: int = DEFAULT_MAX_BATCHES
    interval: float = DEFAULT_INTERVAL

    def __post_init__(self) -> None:
        if self.interval < 0:
            raise ConfigError("the prune interval must not be negative")
        unknown = set(self.retention) - set(DEFAULT_RETENTION)
        if unknown:
            raise ConfigError(f"retention is set per finished state, not for {sorted(unknown)}")
        if self.batch < 1 or self.max_batches < 1:
            raise ConfigError("prune batch and max batches must be at least 1")

    @classmethod
    def from_env(cls) -> PrunerConfig:
        """Retention from BROKER_RETENTION_SUCCEEDED / _FAILED / _CANCELLED (e.g. "7d"),
        and how often workers prune from BROKER_PRUNE_INTERVAL (0 turns it off)."""
        retention = dict(DEFAULT_RETENTION)
        for state in retention:
            name = f"BROKER_RETENTION_{state.upper()}"
            if raw := os.environ.get(name):
                retention[state] = parse_duration(raw, name)
        interval = DEFAULT_INTERVAL
        if raw := os.environ.get("BROKER_PRUNE_INTERVAL"):
            interval = parse_duration(raw, "BROKER_PRUNE_INTERVAL")
        return cls(retention=retention, interval=interval)

    @property
    def enabled(self) -> bool:
        """Whether workers prune at all (BROKER_PRUNE_INTERVAL=0 leaves it to cron)."""
        return self.interval > 0


def prune_batch(state: str, older_than: float, batch: int) -> Statement[int | None]:
    """Delete one batch; None when another process holds the pruner's lock."""
    return Statement(
        "prune_batch",
        {"state": state, "older_than": older_than, "batch": batch},
        lambda rows: None if rows[0][0] is None else int(rows[0][0]),
    )


def prune_count(state: str, older_than: float, most: int) -> Statement[int]:
    """How many jobs of `state` a run would prune, counting at most `most` (a dry run)."""
    return Statement(
        "prune_count",
        {"state": state, "older_than": older_than, "most": most},
        lambda rows: int(rows[0][0]),
    )


def would_prune(client: Broker, config: PrunerConfig) -> dict[str, int]:
    """Jobs per state that `prune_once(client, config)` would delete now; deletes nothing."""
    most = config.batch * config.max_batches
    return {
        state: client.run(prune_count(state, older_than, most))
        for state, older_than in config.retention.items()
    }


class Runner(Protocol):
    """Anything that executes a Statement asynchronously: AsyncBroker, a worker connection."""

    async def run(self, stmt: Statement[T]) -> T: ...


PruneRun = Generator[Statement[int | None], int | None, dict[str, int] | None]


def _plan(config: PrunerConfig) -> PruneRun:
    """The pruning loop, written once: yields each batch statement and receives its count.
    Returns jobs pruned per state, or None when another process holds the lock."""
    pruned: dict[str, int] = {}
    for state, older_than in config.retention.items():
        pruned[state] = 0
        for _ in range(config.max_batches):
            count = yield prune_batch(state, older_than, config.batch)
            if count is None:
                return None
            pruned[state] += count
            if count < config.batch:
                break
    return pruned


def prune_once(client: Broker, config: PrunerConfig) -> dict[str, int] | None:
    """Prune every state once; None if another process is pruning right now."""
    return drive(_plan(config), client.run)


async def aprune_once(client: Runner, config: PrunerConfig) -> dict[str, int] | None:
    """`prune_once` for an async runner (AsyncBroker, a worker's connection)."""
    return await adrive(_plan(config), client.run)


class Paced:
    """Runs each statement, then rests as long as it took, so pruning holds a shared
    connection at most half the time: a worker's outcome writes take turns with the
    batches on it (decision 025), and back to back a backlog of due jobs kept the
    writes to one flush per batch (10M retained, half of it due: the drain ran at 0.70
    of the same drain without pruning; 0.95 paced, bench/README.md)."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    async def run(self, stmt: Statement[T]) -> T:
        loop = asyncio.get_running_loop()
        started = loop.time()
        result = await self.runner.run(stmt)
        await asyncio.sleep(loop.time() - started)
        return result


async def run_pruner(client: Runner, config: PrunerConfig) -> None:
    """Prune every `config.interval` seconds (first after a random part of one, so workers
    started together spread out) until cancelled, paced (`Paced`); failures are logged,
    never raised."""
    await asyncio.sleep(random.uniform(0, config.interval))
    paced = Paced(client)
    while True:
        try:
            pruned = await aprune_once(paced, config)
            if pruned and any(pruned.values()):
                log.info("pruned finished jobs: %s", pruned)
        except (BrokerError, psycopg.Error) as exc:
            log.warning("prune failed: %s", exc)
        await asyncio.sleep(config.interval)
