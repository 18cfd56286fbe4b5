"""Settings read from BROKER_* environment variables, validated once at start-up."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from broker.errors import ConfigError

DEFAULT_SCHEMA = "broker"
DEFAULT_LEASE_TTL = 15.0
DEFAULT_CLOCK_SKEW_TOLERANCE = 3.0

# 56 characters at most: the NOTIFY channels "<schema>_jobs" / "<schema>_cancel" must fit
# PostgreSQL's 63-byte identifier limit.
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,55}$")


def validate_schema(name: str) -> str:
    """Return `name` if it is a plain lower-case SQL identifier, else raise ConfigError.

    Keeping the schema name to this shape means it never needs quoting in NOTIFY
    channel names or in migration DDL.
    """
    if not _IDENTIFIER.match(name):
        raise ConfigError(
            "BROKER_SCHEMA must be a lower-case identifier of at most 56 letters, digits or _,"
            f" got {name!r}"
        )
    return name


def _float(env: str, default: float) -> float:
    raw = os.environ.get(env)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{env} must be a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"{env} must be positive, got {raw!r}")
    return value


@dataclass(frozen=True)
class Settings:
    """Process-wide configuration. Build it with `Settings.from_env()`."""

    database_url: str | None = None
    schema: str = DEFAULT_SCHEMA
    lease_ttl: float = DEFAULT_LEASE_TTL
    clock_skew_tolerance: float = DEFAULT_CLOCK_SKEW_TOLERANCE
    home: Path = field(default_factory=lambda: Path(".broker"))
    state_dir: Path | None = None

    def __post_init__(self) -> None:
        validate_schema(self.schema)

    @classmethod
    def from_env(cls) -> Settings:
        home = Path(os.environ.get("BROKER_HOME") or ".broker")
        state_dir = os.environ.get("BROKER_STATE_DIR")
        return cls(
            database_url=os.environ.get("BROKER_DATABASE_URL") or None,
            schema=validate_schema(os.environ.get("BROKER_SCHEMA") or DEFAULT_SCHEMA),
            lease_ttl=_float("BROKER_LEASE_TTL", DEFAULT_LEASE_TTL),
            clock_skew_tolerance=_float(
                "BROKER_CLOCK_SKEW_TOLERANCE", DEFAULT_CLOCK_SKEW_TOLERANCE
            ),
            home=home,
            state_dir=Path(state_dir) if state_dir else None,
        )

    @property
    def jobs_channel(self) -> str:
        """NOTIFY channel announcing newly runnable jobs; the payload is the queue name."""
        return f"{self.schema}_jobs"

    @property
    def cancel_channel(self) -> str:
        """NOTIFY channel asking workers to cancel a running job; the payload is its id."""
        return f"{self.schema}_cancel"

    @property
    def done_channel(self) -> str:
        """NOTIFY channel announcing jobs that reached a terminal state; the payload is
        their ids, comma-separated (broker.waiting)."""
        return f"{self.schema}_done"

    @property
    def logs_channel(self) -> str:
        """NOTIFY channel announcing log lines of followed jobs; the payload is their ids,
        comma-separated (broker.follow)."""
        return f"{self.schema}_logs"
