"""Fixtures for the /ui tests: the API test app (tests/api), signed-in clients per scope,
and jobs in known states made through the broker's own calls."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import pytest
from litestar.testing import TestClient

from api.app import create_app
from api.config import ApiSettings
from broker import Broker
from broker.config import Settings
from tests.api.conftest import ADMIN, SUBMIT, TOKENS, WORK, api_settings, client

__all__ = ["ADMIN", "SUBMIT", "TOKENS", "WORK", "api_settings", "client"]

CSRF = re.compile(r'name="csrf" value="([^"]+)"')
UiClient = TestClient  # type: ignore[type-arg]


def sign_in(c: UiClient, token: str) -> UiClient:
    """Sign `c` in with `token` (asserting the 303 and the cookie)."""
    answer = c.post("/ui/login", data={"token": token}, follow_redirects=False)
    assert answer.status_code == 303, answer.text
    assert "broker_ui_session" in c.cookies
    return c


def csrf_of(c: UiClient, path: str = "/ui") -> str:
    """The CSRF token the page at `path` carries for `c`'s session."""
    page = c.get(path)
    assert page.status_code == 200, page.text
    found = CSRF.search(page.text)
    assert found, "no CSRF field on " + path
    return found.group(1)


@pytest.fixture
def make_client(db_url: str) -> Iterator[Callable[[ApiSettings], UiClient]]:
    """Clients of further apps on the test database (other tokens, another secret)."""
    opened: list[UiClient] = []

    def make(settings: ApiSettings) -> UiClient:
        app = create_app(Settings(database_url=db_url), api_settings=settings)
        c = TestClient(app, raise_server_exceptions=False)
        c.__enter__()
        opened.append(c)
        return c

    yield make
    for c in opened:
        c.__exit__(None, None, None)


@pytest.fixture
def admin(client: UiClient) -> UiClient:
    return sign_in(client, ADMIN)


def fail_job(broker: Broker, job_id: int, error: str, queue: str = "default") -> None:
    """Claim job `job_id` (it must be the only runnable one in `queue`) and fail it for
    good with `error`."""
    [held] = broker.claim([queue], 1, "test-host:1")
    assert held.job_id == job_id
    broker.fail(held, error, retryable=False)
