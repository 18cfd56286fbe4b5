"""Fixtures for API tests: an app on the test's migrated database, and tokens per scope."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import httpx
import pytest
from litestar import Litestar
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve(db_url: str, **env: str) -> Iterator[str]:
    """Run `broker api` in a subprocess on a free port; yield its base URL."""
    port = free_port()
    environ = {
        **os.environ,
        "BROKER_DATABASE_URL": db_url,
        "BROKER_API_TOKENS": TOKENS,
        **env,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "broker.cli", "api", "--port", str(port), "--no-access-log"],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                out = proc.stdout.read() if proc.stdout else ""
                raise RuntimeError(f"broker api did not become ready:\n{out}")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def live_api(db_url: str) -> Iterator[str]:
    """Base URL of a real `broker api` server (uvicorn) on the test database."""
    with serve(db_url) as base:
        yield base


@asynccontextmanager
async def asgi_client(app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client calling `app` in this event loop, so requests truly run concurrently
    (Litestar's AsyncTestClient hands each request to a portal, one at a time)."""
    async with app.lifespan():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
            yield c
