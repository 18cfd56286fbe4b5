"""Pieces of the API that need no database: cursors, metrics exposition, settings, 404/405."""

from __future__ import annotations

import pytest
from litestar.exceptions import ValidationException
from litestar.testing import TestClient
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from api.config import DEFAULT_MAX_BODY_BYTES, ApiSettings
from api.jobs import decode_cursor, encode_cursor
from api.metrics import Metrics
from broker.config import Settings
from broker.errors import ConfigError


def test_cursor_round_trip_and_rejects() -> None:
    for last in (1, 42, 2**53):
        assert decode_cursor(encode_cursor(last)) == last
    for bad in ("", "x", encode_cursor(5)[:-1] + "!", "ajE6MA", "ajE6LTE", "eDox"):
        with pytest.raises(ValidationException):
            decode_cursor(bad)


def test_metrics_exposition() -> None:
    """The app's own registry, without a database read yet: counters at their values,
    histograms in cumulative buckets, broker_database_up 0 and no database gauges."""
    m = Metrics()
    m.enqueued.labels("emails").inc(3)
    m.enqueued.labels('we"ird').inc()
    m.lease_lost.labels("complete").inc()
    for seconds in (0.0005, 0.003, 0.003, 7.0):
        m.claim_latency.observe(seconds)
    text = m.render().decode()
    found = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert found[("broker_api_jobs_enqueued_total", (("queue", "emails"),))] == 3
    assert found[("broker_api_jobs_enqueued_total", (("queue", 'we"ird'),))] == 1
    assert found[("broker_api_lease_lost_total", (("write", "complete"),))] == 1
    assert found[("broker_api_lease_lost_total", (("write", "fail"),))] == 0
    bucket = "broker_api_claim_duration_seconds_bucket"
    assert found[(bucket, (("le", "0.001"),))] == 1
    assert found[(bucket, (("le", "0.005"),))] == 3
    assert found[(bucket, (("le", "2.5"),))] == 3
    assert found[(bucket, (("le", "+Inf"),))] == 4
    assert found[("broker_api_claim_duration_seconds_count", ())] == 4
    assert found[("broker_database_up", ())] == 0
    assert not [name for name, _ in found if name == "broker_jobs"]


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROKER_API_TOKENS", "abc:submit")
    monkeypatch.delenv("BROKER_API_MAX_BODY_BYTES", raising=False)
    settings = ApiSettings.from_env()
    assert settings.max_body_bytes == DEFAULT_MAX_BODY_BYTES == 1024 * 1024
    assert [t.scopes for t in settings.tokens] == [frozenset({"submit"})]
    monkeypatch.setenv("BROKER_API_MAX_BODY_BYTES", "lots")
    with pytest.raises(ConfigError, match="BROKER_API_MAX_BODY_BYTES"):
        ApiSettings.from_env()
    monkeypatch.setenv("BROKER_API_MAX_BODY_BYTES", "4096")
    monkeypatch.setenv("BROKER_API_AUTH", "maybe")
    with pytest.raises(ConfigError, match="BROKER_API_AUTH"):
        ApiSettings.from_env()


def test_unknown_routes_and_methods_are_problems() -> None:
    # Port 1 refuses at once; these answers never reach the database.
    url = "postgresql://postgres@127.0.0.1:1/none?connect_timeout=1"
    app = create_app(
        Settings(database_url=url), api_settings=ApiSettings(auth_disabled=True, db_wait=1)
    )
    with TestClient(app) as c:
        for method, path, status in (
            ("GET", "/nowhere", 404),
            ("DELETE", "/v1/jobs", 405),
            ("GET", "/v1/jobs/abc", 404),
        ):
            r = c.request(method, path)
            assert r.status_code == status
            assert r.headers["content-type"].startswith("application/problem+json")
            assert r.json()["status"] == status
        # A database that is down is a 503 problem, not a 500 with a driver message.
        r = c.get("/v1/stats")
        assert r.status_code == 503 and "127.0.0.1" not in r.text
