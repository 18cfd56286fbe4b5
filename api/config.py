"""API settings read from BROKER_API_* variables: tokens and scopes, limits, auth switch."""

from __future__ import annotations

import os
from dataclasses import dataclass

from broker._durations import parse_duration
from broker.errors import ConfigError

SCOPES = frozenset({"submit", "work", "admin"})
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_POOL_SIZE = 10
DEFAULT_DB_WAIT = 10.0
MIN_UI_SECRET_LENGTH = 16


@dataclass(frozen=True, slots=True)
class Token:
    """One API token and the scopes it grants."""

    secret: str
    scopes: frozenset[str]


def parse_tokens(raw: str) -> tuple[Token, ...]:
    """Parse BROKER_API_TOKENS: comma-separated `TOKEN` (every scope) or `TOKEN:scope+scope`.

    Raises ConfigError for an unknown scope, an empty or duplicated token.
    """
    tokens: list[Token] = []
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        secret, colon, scope_text = item.partition(":")
        secret = secret.strip()
        if not secret:
            raise ConfigError("BROKER_API_TOKENS holds an entry with an empty token")
        if colon:
            scopes = frozenset(s.strip() for s in scope_text.split("+") if s.strip())
            unknown = scopes - SCOPES
            if unknown or not scopes:
                raise ConfigError(
                    f"BROKER_API_TOKENS: unknown scope(s) {sorted(unknown)}; "
                    f"use {'+'.join(sorted(SCOPES))}"
                )
        else:
            scopes = SCOPES
        if any(t.secret == secret for t in tokens):
            raise ConfigError("BROKER_API_TOKENS lists the same token twice")
        tokens.append(Token(secret, scopes))
    return tuple(tokens)


@dataclass(frozen=True, slots=True)
class ApiSettings:
    """How the API authenticates and what it accepts.

    With no tokens the API refuses to start unless `auth_disabled` is set explicitly
    (BROKER_API_AUTH=disabled), so a forgotten variable never exposes an open queue.
    """

    tokens: tuple[Token, ...] = ()
    auth_disabled: bool = False
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    pool_size: int = DEFAULT_POOL_SIZE
    # How long a request waits for a database connection before answering 503.
    db_wait: float = DEFAULT_DB_WAIT
    # Signs /ui session cookies (BROKER_UI_SECRET); None: derived from the tokens.
    ui_secret: str | None = None

    def __post_init__(self) -> None:
        if not self.tokens and not self.auth_disabled:
            raise ConfigError(
                "no API tokens configured: set BROKER_API_TOKENS=token[:scope+scope],... "
                "or BROKER_API_AUTH=disabled to run without authentication"
            )
        if self.max_body_bytes < 1024:
            raise ConfigError("BROKER_API_MAX_BODY_BYTES must be at least 1024")
        if self.pool_size < 1:
            raise ConfigError("BROKER_API_POOL_SIZE must be at least 1")
        if not self.db_wait > 0:
            raise ConfigError("BROKER_API_DB_WAIT must be a positive number of seconds")
        if self.ui_secret is not None and len(self.ui_secret) < MIN_UI_SECRET_LENGTH:
            raise ConfigError(
                f"BROKER_UI_SECRET must be at least {MIN_UI_SECRET_LENGTH} characters"
            )

    @classmethod
    def from_env(cls) -> ApiSettings:
        auth = (os.environ.get("BROKER_API_AUTH") or "enabled").strip().lower()
        if auth not in ("enabled", "disabled"):
            raise ConfigError(f"BROKER_API_AUTH must be enabled or disabled, got {auth!r}")
        return cls(
            tokens=parse_tokens(os.environ.get("BROKER_API_TOKENS") or ""),
            auth_disabled=auth == "disabled",
            max_body_bytes=_int("BROKER_API_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES),
            pool_size=_int("BROKER_API_POOL_SIZE", DEFAULT_POOL_SIZE),
            db_wait=_seconds("BROKER_API_DB_WAIT", DEFAULT_DB_WAIT),
            ui_secret=os.environ.get("BROKER_UI_SECRET") or None,
        )


def _int(env: str, default: int) -> int:
    raw = os.environ.get(env)
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{env} must be an integer, got {raw!r}") from None


def _seconds(env: str, default: float) -> float:
    raw = os.environ.get(env)
    if not raw:
        return default
    return parse_duration(raw, env)
