"""pg-broker: a job broker that lives entirely in PostgreSQL."""

from __future__ import annotations

from broker.client import AsyncBroker, Broker
from broker.config import Settings
from broker.errors import (
    BrokerError,
    ConfigError,
    DatabaseUnavailable,
    IdempotencyConflict,
    InvalidJobError,
    InvalidQueueSettings,
    InvalidTransition,
    JobNotFound,
    LeaseLost,
    NotMigrated,
)
from broker.lease import Failure
from broker.spec import JobSpec
from broker.task import Fail, JobContext, Retry, Snooze, task
from broker.types import (
    Enqueued,
    HeartbeatOutcome,
    Job,
    JobEvent,
    Lease,
    LogLine,
    Reaped,
    WriteOutcome,
)

__all__ = [
    "AsyncBroker",
    "Broker",
    "BrokerError",
    "ConfigError",
    "DatabaseUnavailable",
    "Enqueued",
    "Fail",
    "Failure",
    "HeartbeatOutcome",
    "IdempotencyConflict",
    "InvalidJobError",
    "InvalidQueueSettings",
    "InvalidTransition",
    "Job",
    "JobContext",
    "JobEvent",
    "JobNotFound",
    "JobSpec",
    "Lease",
    "LeaseLost",
    "LogLine",
    "NotMigrated",
    "Reaped",
    "Retry",
    "Settings",
    "Snooze",
    "WriteOutcome",
    "task",
]
__version__ = "0.1.0"
