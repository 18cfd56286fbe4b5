"""Auth matrix: every endpoint with no token, a bad token, and a token lacking the scope.

The endpoint list is checked against the served OpenAPI schema, so a new endpoint without
an entry here fails the test instead of going unchecked.
"""

from __future__ import annotations

from typing import Any

import pytest
from litestar.testing import TestClient

from api.app import create_app
from api.auth import Authenticator
from api.config import ApiSettings, parse_tokens
from broker.config import Settings
from broker.errors import ConfigError
from tests.api.conftest import ADMIN, SUBMIT, WORK, bearer

Client = TestClient  # type: ignore[type-arg]
LEASE = {"worker_id": "w:1", "lease_epoch": 1}

# (method, path, scope, body)
ENDPOINTS: list[tuple[str, str, str, dict[str, Any] | None]] = [
    ("POST", "/v1/jobs", "submit", {"kind": "k"}),
    ("POST", "/v1/jobs/batch", "submit", {"jobs": [{"kind": "k"}]}),
    ("GET", "/v1/jobs", "submit", None),
    ("GET", "/v1/jobs/{job_id}", "submit", None),
    ("GET", "/v1/jobs/{job_id}/events", "submit", None),
    ("GET", "/v1/jobs/{job_id}/logs", "submit", None),
    ("POST", "/v1/jobs/{job_id}/cancel", "submit", None),
    ("POST", "/v1/jobs/{job_id}/retry", "submit", None),
    ("POST", "/v1/leases", "work", {"worker_id": "w:1", "queues": ["default"]}),
    ("POST", "/v1/jobs/{job_id}/heartbeat", "work", LEASE),
    ("POST", "/v1/jobs/{job_id}/complete", "work", LEASE),
    ("POST", "/v1/jobs/{job_id}/fail", "work", {**LEASE, "error": "e"}),
    ("POST", "/v1/jobs/{job_id}/logs", "work", {**LEASE, "lines": ["x"]}),
    ("GET", "/v1/groups/{group}", "submit", None),
    ("GET", "/v1/queues", "admin", None),
    ("GET", "/v1/workers", "admin", None),
    ("GET", "/v1/stats", "admin", None),
    ("GET", "/metrics", "admin", None),
]
PUBLIC = {("GET", "/healthz"), ("GET", "/readyz")}
LACKING = {"submit": WORK, "work": SUBMIT, "admin": SUBMIT}
GRANTED = {"submit": SUBMIT, "work": WORK, "admin": ADMIN}


def test_matrix_covers_every_endpoint(client: Client) -> None:
    schema = client.get("/schema/openapi.json").json()
    served = {
        (method.upper(), path)
        for path, item in schema["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    }
    assert served == {(m, p) for m, p, _, _ in ENDPOINTS} | PUBLIC


def test_unauthorized_requests_never_succeed(client: Client) -> None:
    job_id = client.post("/v1/jobs", json={"kind": "k"}, headers=bearer(ADMIN)).json()["id"]
    before = client.get("/v1/stats", headers=bearer(ADMIN)).json()["total"]
    wrong = [
        ({}, 401),
        (bearer("not-a-token"), 401),
        (bearer(ADMIN + "x"), 401),
        ({"Authorization": f"Basic {ADMIN}"}, 401),
        ({"Authorization": "Bearer"}, 401),
    ]
    successes = []
    for method, path, scope, body in ENDPOINTS:
        url = path.format(job_id=job_id, group="g")
        for headers, status in [*wrong, (bearer(LACKING[scope]), 403)]:
            r = client.request(method, url, json=body, headers=headers)
            if r.status_code < 400:
                successes.append((method, url, headers))
            assert r.status_code == status, (method, url, headers, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")
            if status == 401:
                assert r.headers["www-authenticate"].startswith("Bearer")
        granted = client.request(method, url, json=body, headers=bearer(GRANTED[scope]))
        assert granted.status_code not in (401, 403), (method, url, granted.text)
    assert successes == []
    # Nothing the rejected requests carried was enqueued (the granted ones add 2 jobs).
    assert client.get("/v1/stats", headers=bearer(ADMIN)).json()["total"] == before + 2


def test_health_checks_and_docs_need_no_token(client: Client) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    assert client.get("/schema/openapi.json").status_code == 200
    assert client.get("/schema").status_code == 200


def test_refuses_to_start_without_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BROKER_API_TOKENS", raising=False)
    monkeypatch.delenv("BROKER_API_AUTH", raising=False)
    with pytest.raises(ConfigError, match="BROKER_API_TOKENS"):
        create_app(Settings(database_url="postgresql://unused"))
    monkeypatch.setenv("BROKER_API_AUTH", "disabled")
    assert create_app(Settings(database_url="postgresql://unused")) is not None


def test_token_parsing() -> None:
    tokens = parse_tokens(" a , b:submit+work ,c:admin")
    assert [(t.secret, sorted(t.scopes)) for t in tokens] == [
        ("a", ["admin", "submit", "work"]),
        ("b", ["submit", "work"]),
        ("c", ["admin"]),
    ]
    for bad in ("a:root", "a:", ":submit", "a,a"):
        with pytest.raises(ConfigError):
            ApiSettings(tokens=parse_tokens(bad))


def test_principals_are_stable_and_distinct() -> None:
    auth = Authenticator(ApiSettings(tokens=parse_tokens("one,two:work")))
    one, two = auth.authenticate("Bearer one"), auth.authenticate("bearer two")
    assert one == auth.authenticate("Bearer one")
    assert one.token_id != two.token_id and two.scopes == {"work"}


def test_auth_disabled_admits_anonymous(db_url: str) -> None:
    app = create_app(Settings(database_url=db_url), api_settings=ApiSettings(auth_disabled=True))
    with TestClient(app) as c:
        assert c.post("/v1/jobs", json={"kind": "k"}).status_code == 201
        assert c.get("/v1/stats").status_code == 200
