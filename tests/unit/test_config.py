"""Settings validation that needs no database: how long a schema name may be, the
PgBouncer settings (BROKER_LISTEN_URL, BROKER_PREPARE_THRESHOLD)."""

from __future__ import annotations

import pytest

from broker import ConfigError
from broker._exits import EXIT_BAD_INPUT, exit_code
from broker.config import DEFAULT_PREPARE_THRESHOLD, Settings, validate_schema
from broker.errors import InvalidSetting


def test_schema_names_leave_room_for_notify_channels() -> None:
    assert validate_schema("s" * 56) == "s" * 56
    with pytest.raises(ConfigError, match="at most 56"):
        validate_schema("s" * 57)


@pytest.mark.parametrize(
    ("raw", "listen_url", "expected"),
    [
        (None, None, DEFAULT_PREPARE_THRESHOLD),
        ("", None, DEFAULT_PREPARE_THRESHOLD),
        # BROKER_LISTEN_URL says the database URL is a transaction pooler (decision 020).
        (None, "postgresql://db:5432/app", None),
        ("none", None, None),
        (" None ", None, None),
        ("0", None, 0),
        ("12", "postgresql://db:5432/app", 12),
    ],
)
def test_prepare_threshold_from_env(
    monkeypatch: pytest.MonkeyPatch, raw: str | None, listen_url: str | None, expected: int | None
) -> None:
    for name, value in (("BROKER_PREPARE_THRESHOLD", raw), ("BROKER_LISTEN_URL", listen_url)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    settings = Settings.from_env()
    assert settings.prepare_threshold == expected
    assert settings.listen_url == listen_url
    assert settings.listen_target("postgresql://pooler:6432/app") == (
        listen_url or "postgresql://pooler:6432/app"
    )


@pytest.mark.parametrize("raw", ["often", "-1", "5.0", "1e3", "9999999999", "null"])
def test_bad_prepare_threshold_is_an_invalid_setting(
    monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    monkeypatch.setenv("BROKER_PREPARE_THRESHOLD", raw)
    with pytest.raises(InvalidSetting, match="BROKER_PREPARE_THRESHOLD must be `none` or"):
        Settings.from_env()
    assert exit_code(InvalidSetting("x")) == EXIT_BAD_INPUT


def test_bad_listen_url_is_an_invalid_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROKER_LISTEN_URL", "db.example.com:5432")
    with pytest.raises(InvalidSetting, match="BROKER_LISTEN_URL is not a valid PostgreSQL URL"):
        Settings.from_env()
