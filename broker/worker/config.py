"""A worker process's configuration and the defaults of every worker option.

`broker worker`'s options (command.py), the environment they read and `WorkerConfig`
take their defaults from these constants; each service's own defaults live with it
(heartbeat.py, reaper.py, listener.py, writer.py, scheduler.py, broker/pruner.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from broker.config import Settings
from broker.pruner import PrunerConfig
from broker.worker.heartbeat import HeartbeatConfig
from broker.worker.listener import ListenerConfig
from broker.worker.reaper import ReaperConfig
from broker.worker.scheduler import SchedulerConfig
from broker.worker.writer import WriterConfig

DEFAULT_CONCURRENCY = 10
DEFAULT_POLL_INTERVAL = 1.0
DEFAULT_SHUTDOWN_GRACE = 30.0
DEFAULT_PROCESSES = 1
DEFAULT_SEQ = 1
DEFAULT_LOG_LEVEL = "INFO"


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker process needs; `settings` supplies schema, TTL, state dir."""

    database_url: str
    queues: tuple[str, ...]
    concurrency: int = DEFAULT_CONCURRENCY
    seq: int = DEFAULT_SEQ
    settings: Settings = field(default_factory=Settings)
    poll_interval: float = DEFAULT_POLL_INTERVAL
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE
    heartbeat: HeartbeatConfig = field(default_factory=HeartbeatConfig)
    max_clock_skew: float | None = None
    reaper: ReaperConfig = field(default_factory=ReaperConfig)
    pruner: PrunerConfig = field(default_factory=PrunerConfig)
    listener: ListenerConfig = field(default_factory=ListenerConfig)
    writer: WriterConfig = field(default_factory=WriterConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    version: str = "0"
    # Set by the supervisor: a worker whose supervisor is gone stops (and drains).
    supervisor_pid: int | None = None

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if not self.queues:
            raise ValueError("a worker needs at least one queue")
        if self.seq < 0:
            raise ValueError("seq must not be negative")

    @property
    def lease_ttl(self) -> float:
        return self.settings.lease_ttl
