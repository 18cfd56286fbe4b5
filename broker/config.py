"""Settings read from BROKER_* environment variables, validated once at start-up."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from broker.errors import ConfigError, InvalidSetting

DEFAULT_SCHEMA = "broker"
DEFAULT_LEASE_TTL = 15.0
DEFAULT_CLOCK_SKEW_TOLERANCE = 3.0
# psycopg's own default: a statement is prepared on the server after 5 runs on a
# connection. Behind a transaction pooler without prepared-statement support (PgBouncer
# before 1.21) it must be None (`BROKER_PREPARE_THRESHOLD=none`); see docs/scaling.md.
DEFAULT_PREPARE_THRESHOLD = 5
# The default when BROKER_LISTEN_URL is set, which says BROKER_DATABASE_URL goes through a
# transaction pooler (decision 020).
POOLED_PREPARE_THRESHOLD: int | None = None

# 56 characters at most: the NOTIFY channels "<schema>_jobs" / "<schema>_cancel" must fit
# PostgreSQL's 63-byte identifier limit.
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,55}$")


def validate_schema(name: str) -> str:
    """Return `name` if it is a plain lower-case SQL identifier, else raise ConfigError.

    Keeping the schema name to this shape means it never needs quoting in NOTIFY
    channel names or in migration DDL.
    """
    if not _IDENTIFIER.match(name):
        raise InvalidSetting(
            "BROKER_SCHEMA must be a lower-case identifier of at most 56 letters, digits or _,"
            f" got {name!r}"
        )
    return name


def _float(env: str, default: float) -> float:
    raw = os.environ.get(env)
    if raw is None or raw == "":
        return default
    from broker._durations import parse_duration

    try:
        value = parse_duration(raw, env)
    except ConfigError as exc:
        raise InvalidSetting(str(exc)) from None
    if value <= 0:
        raise InvalidSetting(f"{env} must be positive, got {raw!r}")
    return value


def _prepare_threshold(raw: str | None, pooled: bool) -> int | None:
    """BROKER_PREPARE_THRESHOLD: `none` (no server-side prepared statements) or an integer
    >= 0 (psycopg's prepare_threshold); unset, the default for a direct or a pooled URL."""
    if raw is None or raw.strip() == "":
        return POOLED_PREPARE_THRESHOLD if pooled else DEFAULT_PREPARE_THRESHOLD
    text = raw.strip().lower()
    if text == "none":
        return None
    if text.isdigit() and len(text) <= 9:
        return int(text)
    raise InvalidSetting(
        f"BROKER_PREPARE_THRESHOLD must be `none` or an integer of at least 0, got {raw!r}"
    )


def _listen_url(raw: str | None) -> str | None:
    """BROKER_LISTEN_URL: a postgresql:// URL (or a libpq key=value string), or unset."""
    if raw is None or raw.strip() == "":
        return None
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        conninfo_to_dict(raw)
    except ProgrammingError:
        raise InvalidSetting("BROKER_LISTEN_URL is not a valid PostgreSQL URL") from None
    return raw


def user_state_dir() -> Path:
    """The per-user directory for a worker's identity (its host id): $XDG_STATE_HOME/pg-broker,
    else ~/.local/state/pg-broker. Per user, not per working directory, so two workers of
    one user on one host share a host id wherever they were started."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "pg-broker"


@dataclass(frozen=True)
class Settings:
    """Process-wide configuration. Build it with `Settings.from_env()`."""

    database_url: str | None = None
    schema: str = DEFAULT_SCHEMA
    lease_ttl: float = DEFAULT_LEASE_TTL
    clock_skew_tolerance: float = DEFAULT_CLOCK_SKEW_TOLERANCE
    home: Path = field(default_factory=lambda: Path(".broker"))
    state_dir: Path | None = None
    # Where LISTEN connections go when database_url is a transaction pooler (None: the
    # database URL); see docs/scaling.md.
    listen_url: str | None = None
    # psycopg's prepare_threshold for every connection the broker opens; None disables
    # server-side prepared statements.
    prepare_threshold: int | None = DEFAULT_PREPARE_THRESHOLD

    def __post_init__(self) -> None:
        validate_schema(self.schema)
        if self.prepare_threshold is not None and self.prepare_threshold < 0:
            raise InvalidSetting("prepare_threshold must be None or at least 0")

    @classmethod
    def from_env(cls) -> Settings:
        home = Path(os.environ.get("BROKER_HOME") or ".broker")
        state_dir = os.environ.get("BROKER_STATE_DIR")
        listen_url = _listen_url(os.environ.get("BROKER_LISTEN_URL"))
        return cls(
            database_url=os.environ.get("BROKER_DATABASE_URL") or None,
            schema=validate_schema(os.environ.get("BROKER_SCHEMA") or DEFAULT_SCHEMA),
            lease_ttl=_float("BROKER_LEASE_TTL", DEFAULT_LEASE_TTL),
            clock_skew_tolerance=_float(
                "BROKER_CLOCK_SKEW_TOLERANCE", DEFAULT_CLOCK_SKEW_TOLERANCE
            ),
            home=home,
            state_dir=Path(state_dir) if state_dir else None,
            listen_url=listen_url,
            prepare_threshold=_prepare_threshold(
                os.environ.get("BROKER_PREPARE_THRESHOLD"), pooled=listen_url is not None
            ),
        )

    def listen_target(self, database_url: str) -> str:
        """The URL LISTEN connections use: BROKER_LISTEN_URL, else `database_url`."""
        return self.listen_url or database_url

    @property
    def jobs_channel(self) -> str:
        """NOTIFY channel announcing newly runnable jobs; the payload is the queue name."""
        return f"{self.schema}_jobs"

    @property
    def cancel_channel(self) -> str:
        """NOTIFY channel asking workers to cancel a running job; the payload is its id."""
        return f"{self.schema}_cancel"

    @property
    def probe_channel(self) -> str:
        """NOTIFY channel every LISTEN connection also listens on, to prove notifications
        reach it (broker/_listen_probe.py); the payload is a token."""
        return f"{self.schema}_probe"

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
