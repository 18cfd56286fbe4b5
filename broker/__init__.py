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
    InvalidTransition,
    JobNotFound,
    LeaseLost,
)
from broker.lease import (
    Enqueued,
    Failure,
    HeartbeatOutcome,
    Job,
    JobEvent,
    JobSpec,
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
    "Failure",
    "HeartbeatOutcome",
    "IdempotencyConflict",
    "InvalidJobError",
    "InvalidTransition",
    "Job",
    "JobEvent",
    "JobNotFound",
    "JobSpec",
    "Lease",
    "LeaseLost",
    "LogLine",
    "Reaped",
    "Settings",
    "WriteOutcome",
]
__version__ = "0.1.0"
