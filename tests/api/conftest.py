"""Fixtures for API tests: an app on the test's migrated database, and tokens per scope."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from litestar.testing import TestClient

from api.app import create_app
from api.config import ApiSettings, parse_tokens
from broker.config import Settings

ADMIN = "admin-secret-token"
SUBMIT = "submit-secret-token"
WORK = "work-secret-token"
TOKENS = f"{ADMIN},{SUBMIT}:submit,{WORK}:work"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def api_settings() -> ApiSettings:
    return ApiSettings(tokens=parse_tokens(TOKENS), max_body_bytes=64 * 1024)


@pytest.fixture
def client(db_url: str, api_settings: ApiSettings) -> Iterator[TestClient]:  # type: ignore[type-arg]
    """A test client whose app opened its own pool on the test database."""
    app = create_app(Settings(database_url=db_url, lease_ttl=15.0), api_settings=api_settings)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client
