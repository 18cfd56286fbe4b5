"""broker._durations: the one duration syntax of CLI flags and environment variables."""

from __future__ import annotations

import pytest

from broker._durations import parse_duration
from broker.config import Settings
from broker.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30", 30),
        ("2.5", 2.5),
        ("2.5s", 2.5),
        ("850ms", 0.85),
        ("10m", 600),
        ("90m", 5400),
        ("1h30m", 5400),
        ("36h", 36 * 3600),
        ("7d", 7 * 86400),
        ("1d12h", 36 * 3600),
        ("1h0m30s", 3630),
        (" 5M ", 300),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text, "--delay") == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "a week", "-5", "10x", "30m1h", "1h1h", "1h30", "m", "1.h"])
def test_what_is_not_a_duration_names_the_setting(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^BROKER_LEASE_TTL must be a duration: seconds"):
        parse_duration(text, "BROKER_LEASE_TTL")


def test_settings_read_durations(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROKER_LEASE_TTL", "1m")
    monkeypatch.setenv("BROKER_CLOCK_SKEW_TOLERANCE", "500ms")
    settings = Settings.from_env()
    assert (settings.lease_ttl, settings.clock_skew_tolerance) == (60, 0.5)
    monkeypatch.setenv("BROKER_LEASE_TTL", "0s")
    with pytest.raises(ConfigError, match="must be positive"):
        Settings.from_env()


def test_api_settings_read_durations(monkeypatch: pytest.MonkeyPatch) -> None:
    from api.config import ApiSettings

    monkeypatch.setenv("BROKER_API_AUTH", "disabled")
    monkeypatch.setenv("BROKER_API_DB_WAIT", "2.5s")
    assert ApiSettings.from_env().db_wait == 2.5
