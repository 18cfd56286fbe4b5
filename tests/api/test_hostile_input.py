"""Requests a hostile client can craft: every one gets a 4xx problem, never a 5xx; a bad
request never fails a good neighbour in the group commit; and (Hypothesis) the database
holds exactly the jobs the API said it created."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar.testing import TestClient

from api.app import create_app
from api.batcher import EnqueueBatcher
from api.config import ApiSettings, parse_tokens
from broker import JobSpec
from broker.config import Settings
from broker.lease import Enqueued, Job, Statement
from tests.api.conftest import SUBMIT, TOKENS, WORK, asgi_client, bearer

Client = TestClient  # type: ignore[type-arg]
H = bearer(SUBMIT)
JSON = {"content-type": "application/json"}


def deep(depth: int) -> str:
    """JSON text of an array `depth` deep (built as text: json.dumps would recurse)."""
    return "[" * depth + "]" * depth


def body(value: Any) -> bytes:
    """JSON with non-ASCII escaped, so a lone surrogate travels as the escape \\ud800."""
    return json.dumps(value, ensure_ascii=True).encode()


def spliced(value: dict[str, Any], field: str, raw: str) -> bytes:
    """`value` as JSON with `field` set to the JSON text `raw` (too deep for json.dumps)."""
    marker = "__raw__"
    return body({**value, field: marker}).decode().replace(f'"{marker}"', raw).encode()


def assert_client_error(r: Any) -> dict[str, Any]:
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/problem+json"), r.text
    problem = dict(r.json())
    text = r.text.lower()
    assert "traceback" not in text and "psycopg" not in text and "recursion" not in text
    return problem


def job_count(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM broker.jobs").fetchone()
    assert row is not None
    return int(row[0])


HOSTILE_BODIES: list[tuple[str, bytes]] = [
    ("NUL in an args value", body({"kind": "k", "args": {"a": "x\x00y"}})),
    ("NUL in an args key", body({"kind": "k", "args": {"a\x00": 1}})),
    ("NUL in kind", body({"kind": "k\x00"})),
    ("NUL in queue", body({"kind": "k", "queue": "q\x00"})),
    ("NUL in a tag", body({"kind": "k", "tags": ["t\x00"]})),
    ("NUL in the idempotency key", body({"kind": "k", "idempotency_key": "i\x00"})),
    ("NUL in the subject key", body({"kind": "k", "subject_key": "s\x00"})),
    ("lone surrogate in args", body({"kind": "k", "args": {"a": "\ud800"}})),
    ("lone surrogate in an args key", body({"kind": "k", "args": {"\udfff": 1}})),
    ("lone surrogate in a tag", body({"kind": "k", "tags": ["\ud800"]})),
    ("invalid UTF-8", b'{"kind": "k", "args": {"a": "\xff\xfe"}}'),
    ("args 65 deep", f'{{"kind": "k", "args": {{"a": {deep(64)}}}}}'.encode()),
    ("args 1,000 deep", f'{{"kind": "k", "args": {{"a": {deep(999)}}}}}'.encode()),
    ("args 10,000 deep", f'{{"kind": "k", "args": {{"a": {deep(9999)}}}}}'.encode()),
    ("the body 10,000 deep", deep(10_000).encode()),
    ("priority as a string", body({"kind": "k", "priority": "5"})),
    ("max_attempts as a float", body({"kind": "k", "max_attempts": 1.0})),
    ("run_at as a number", body({"kind": "k", "run_at": 12345})),
    ("run_at in year 10000 east of UTC", body({"kind": "k", "run_at": "9999-12-31T23:59:59Z"})),
    ("priority past the integer range", body({"kind": "k", "priority": 2**31})),
    ("a huge number", b'{"kind": "k", "args": {"n": 1e400}}'),
    ("33 tags", body({"kind": "k", "tags": ["t"] * 33})),
    ("an empty tag", body({"kind": "k", "tags": [""]})),
    ("a 201-character key", body({"kind": "k", "idempotency_key": "k" * 201})),
]


@pytest.mark.parametrize(("case", "raw"), HOSTILE_BODIES, ids=[c for c, _ in HOSTILE_BODIES])
def test_hostile_enqueue_bodies_are_4xx_and_create_nothing(
    client: Client, conn: psycopg.Connection[Any], case: str, raw: bytes
) -> None:
    assert_client_error(client.post("/v1/jobs", content=raw, headers={**H, **JSON}))
    batch = b'{"jobs": [{"kind": "fine"}, ' + raw + b"]}"
    assert_client_error(client.post("/v1/jobs/batch", content=batch, headers={**H, **JSON}))
    assert job_count(conn) == 0


def test_only_json_bodies(client: Client, conn: psycopg.Connection[Any]) -> None:
    raw = body({"kind": "k"})
    for content_type in ("text/plain", "application/x-www-form-urlencoded", ""):
        r = client.post("/v1/jobs", content=raw, headers={**H, "content-type": content_type})
        assert r.status_code == 415, r.text
    ok = client.post("/v1/jobs", content=raw, headers={**H, "content-type": "application/json"})
    assert ok.status_code == 201
    assert job_count(conn) == 1


def test_path_ids_are_digits_in_range(client: Client) -> None:
    job = client.post("/v1/jobs", json={"kind": "k"}, headers=H).json()
    assert job["id"] == 1
    assert client.get("/v1/jobs/1", headers=H).status_code == 200
    for path in ("%201", "1%20", "+1", "01", "1_0", "1e0", "%D9%A1", "0x1", "1.0"):
        r = client.get(f"/v1/jobs/{path}", headers=H)
        assert r.status_code in (400, 404), (path, r.status_code)
        cancel = client.post(f"/v1/jobs/{path}/cancel", headers=H)
        assert cancel.status_code in (400, 404), (path, cancel.status_code)
    assert client.get("/v1/jobs/1", headers=H).json()["state"] == "queued", "nothing cancelled"
    assert assert_client_error(client.get(f"/v1/jobs/{2**53 + 1}", headers=H))["status"] == 400


@pytest.mark.parametrize("tag", ["%00", "%ED%A0%80", "%FF", "a%0Ab"])
def test_hostile_list_filters_are_4xx(client: Client, tag: str) -> None:
    r = client.get(f"/v1/jobs?tag={tag}", headers=H)
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        assert_client_error(r)


def test_worker_protocol_refuses_what_it_cannot_store(
    client: Client, conn: psycopg.Connection[Any]
) -> None:
    client.post("/v1/jobs", json={"kind": "k", "queue": "w"}, headers=H)
    [held] = client.post(
        "/v1/leases", json={"worker_id": "w:1", "queues": ["w"]}, headers=bearer(WORK)
    ).json()["leases"]
    base = f"/v1/jobs/{held['job_id']}"
    fence = {"worker_id": "w:1", "lease_epoch": held["lease_epoch"]}
    W = {**bearer(WORK), **JSON}
    for path, payload in (
        ("/complete", body({**fence, "result": {"a": "\x00"}})),
        ("/complete", body({**fence, "result": "\ud800"})),
        ("/complete", spliced(fence, "result", deep(65))),
        ("/complete", spliced(fence, "result", deep(5000))),
        ("/fail", body({**fence, "error": "bad\x00"})),
        ("/fail", body({**fence, "error": "\ud800"})),
        ("/logs", body({**fence, "lines": ["ok", "bad\x00"]})),
        ("/heartbeat", body({**fence, "worker_id": "w\x00"})),
    ):
        assert_client_error(client.post(base + path, content=payload, headers=W))
    row = conn.execute("SELECT state, result, last_error FROM broker.jobs").fetchone()
    assert row == ("running", None, None)
    assert conn.execute("SELECT count(*) FROM broker.job_logs").fetchone() == (0,)
    done = client.post(base + "/complete", content=body({**fence, "result": 1}), headers=W)
    assert done.status_code == 200


def test_a_bad_request_in_a_concurrent_group_fails_only_itself(
    db_url: str, conn: psycopg.Connection[Any]
) -> None:
    app = create_app(
        Settings(database_url=db_url), api_settings=ApiSettings(tokens=parse_tokens(TOKENS))
    )
    bad = [raw for _, raw in HOSTILE_BODIES[:4] + HOSTILE_BODIES[11:13]]
    good = [body({"kind": "k", "args": {"n": n}}) for n in range(40)]
    requests = good[:20] + bad + good[20:]

    async def run() -> list[Any]:
        async with asgi_client(app) as c:
            return await asyncio.gather(
                *(c.post("/v1/jobs", content=raw, headers={**H, **JSON}) for raw in requests)
            )

    responses = asyncio.run(run())
    statuses = [r.status_code for r in responses]
    assert statuses == [201] * 20 + [statuses[20 + i] for i in range(len(bad))] + [201] * 20
    assert all(400 <= s < 500 for s in statuses[20 : 20 + len(bad)])
    created = sorted(r.json()["args"]["n"] for r in responses if r.status_code == 201)
    assert created == list(range(40))
    assert job_count(conn) == 40


class _ExplodingClient:
    """A broker client whose statement fails outright for a group holding kind 'explode'
    (an error nothing foresaw: not a BrokerError, not from the database)."""

    def __init__(self) -> None:
        self.next_id = 0
        self.jobs: dict[int, Job] = {}

    async def enqueue_many(
        self, specs: list[JobSpec], conn: Any = None, *, idempotency_scope: str | None = None
    ) -> list[Enqueued]:
        await asyncio.sleep(0.01)
        if any(s.kind == "explode" for s in specs):
            raise RuntimeError("something nobody foresaw")
        created = []
        for spec in specs:
            self.next_id += 1
            self.jobs[self.next_id] = _job(self.next_id, spec.kind)
            created.append(Enqueued(self.next_id, True))
        return created

    async def run(self, stmt: Statement[Any], conn: Any = None) -> Any:
        if stmt.query == "job_enqueue_routed":  # the batcher's enqueue statement
            specs = [JobSpec(s["kind"]) for s in json.loads(stmt.params["specs"])]
            return await self.enqueue_many(specs)
        return [self.jobs[i] for i in stmt.params["ids"]]


def _job(job_id: int, kind: str) -> Job:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    return Job(
        *(job_id, "default", kind, {}, 0, "queued", now, 0, 1, 0, None, None, None, None),
        *(None, None, [], now, None, None, None, None),
    )


def test_the_group_commit_isolates_failures_of_any_kind() -> None:
    client = _ExplodingClient()
    batcher = EnqueueBatcher()

    async def run() -> list[Any]:
        kinds = [f"k{n}" for n in range(30)]
        kinds.insert(12, "explode")
        return await asyncio.gather(
            *(batcher.enqueue(client, JobSpec(k), None) for k in kinds),  # type: ignore[arg-type]
            return_exceptions=True,
        )

    results = asyncio.run(run())
    failed = [r for r in results if isinstance(r, BaseException)]
    assert len(failed) == 1 and str(failed[0]) == "something nobody foresaw"
    assert sorted(r.job.kind for r in results if not isinstance(r, BaseException)) == sorted(
        f"k{n}" for n in range(30)
    )
    assert len(client.jobs) == 30


def test_readyz_answers_within_two_seconds_while_the_database_is_down() -> None:
    url = "postgresql://postgres@127.0.0.1:1/none?connect_timeout=1"
    # The default pool wait (10 s) is what a request waiting for a connection would take.
    app = create_app(Settings(database_url=url), api_settings=ApiSettings(auth_disabled=True))
    with TestClient(app) as c:
        started = time.monotonic()
        r = c.get("/readyz")
        took = time.monotonic() - started
    assert r.status_code == 503 and took < 2.0, took


# --- property: no 5xx, and the database holds exactly what was accepted ----------------------

HOSTILE_TEXT = st.sampled_from(
    ["\x00", "a\x00b", "\ud800", "\udfff", "x\udc80", "\x1f", "\n", " ", "", "é", "k" * 201]
)
TEXT = st.one_of(st.text(max_size=20), HOSTILE_TEXT)
NAME = st.one_of(st.from_regex(r"\A[A-Za-z0-9_.:-]{1,12}\Z"), TEXT)
NUMBER = st.one_of(
    st.integers(min_value=-(2**64), max_value=2**64),
    st.sampled_from([0, 1, 1000, 1001, 2**31 - 1, 2**31, -(2**31), -(2**31) - 1]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1.0, 0.5, -1.0, 3155760000.0, 3155760001.0]),
)
SCALAR = st.one_of(st.none(), st.booleans(), NUMBER, TEXT)
JSON_VALUE = st.recursive(
    SCALAR,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(TEXT, inner, max_size=3)),
    max_leaves=8,
)
RUN_AT = st.one_of(
    st.sampled_from(
        [
            "2030-01-01T00:00:00Z",
            "2030-01-01T00:00:00",
            "9999-12-30T23:59:59Z",
            "9999-12-31T23:59:59Z",
            "0001-01-01T00:00:00+01:00",
            "2030-13-01T00:00:00Z",
        ]
    ),
    NUMBER,
    TEXT,
)
FIELDS = {
    "kind": NAME,
    "args": st.one_of(st.dictionaries(TEXT, JSON_VALUE, max_size=4), JSON_VALUE),
    "queue": NAME,
    "priority": st.one_of(NUMBER, TEXT),
    "run_at": RUN_AT,
    "delay": st.one_of(NUMBER, TEXT),
    "max_attempts": st.one_of(NUMBER, TEXT),
    "timeout": st.one_of(NUMBER, TEXT),
    "idempotency_key": st.one_of(st.from_regex(r"\A[a-z]{1,4}\Z"), TEXT),
    "subject_key": st.one_of(st.from_regex(r"\A[a-z]{1,4}\Z"), TEXT),
    "tags": st.one_of(st.lists(TEXT, max_size=4), st.lists(st.just("t"), min_size=30, max_size=34)),
    "surprise": SCALAR,
}
SPEC = st.fixed_dictionaries(
    {"kind": NAME}, optional={k: v for k, v in FIELDS.items() if k != "kind"}
)
DEPTH = st.sampled_from([None, None, None, 63, 64, 65, 1500, 20_000])


def _encode(spec: dict[str, Any], depth: int | None) -> bytes:
    """The spec as JSON; with `depth`, its args hold an array nested that deep (counting
    args itself), spliced in as text."""
    if depth is None:
        return body(spec)
    return spliced(spec, "args", '{"deep": ' + deep(depth - 1) + "}")


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
@given(
    specs=st.lists(st.tuples(SPEC, DEPTH), min_size=1, max_size=3),
    batch=st.booleans(),
    content_type=st.sampled_from(["application/json"] * 5 + ["text/plain"]),
)
def test_no_hostile_request_is_a_server_error_and_only_accepted_jobs_exist(
    client: Client,
    conn: psycopg.Connection[Any],
    specs: list[tuple[dict[str, Any], int | None]],
    batch: bool,
    content_type: str,
) -> None:
    before = {r[0] for r in conn.execute("SELECT id FROM broker.jobs").fetchall()}
    headers = {**H, "content-type": content_type}
    accepted: set[int] = set()
    if batch:
        raw = b'{"jobs": [' + b", ".join(_encode(s, d) for s, d in specs) + b"]}"
        r = client.post("/v1/jobs/batch", content=raw, headers=headers)
        if r.status_code == 201:
            accepted = {j["id"] for j in r.json()["jobs"] if j["created"]}
    else:
        for spec, depth in specs:
            r = client.post("/v1/jobs", content=_encode(spec, depth), headers=headers)
            assert r.status_code < 500, r.text
            if r.status_code == 201 and "idempotent-replayed" not in r.headers:
                accepted.add(r.json()["id"])
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        assert_client_error(r)
    after = {r[0] for r in conn.execute("SELECT id FROM broker.jobs").fetchall()}
    assert after - before == accepted
    for job_id in accepted:
        got = client.get(f"/v1/jobs/{job_id}", headers=H)
        assert got.status_code == 200, got.text


def test_a_row_nobody_can_decode_is_shown_and_never_leased(
    client: Client, conn: psycopg.Connection[Any]
) -> None:
    from tests.integration.test_bad_input import insert_unreadable

    good = client.post("/v1/jobs", json={"kind": "k"}, headers=H).json()["id"]
    bad = insert_unreadable(conn)  # type: ignore[arg-type]
    assert set(client.get(f"/v1/jobs/{bad}", headers=H).json()["args"]) == {"unreadable"}
    assert client.get("/v1/jobs", headers=H).status_code == 200
    leases = client.post(
        "/v1/leases",
        json={"worker_id": "w:1", "queues": ["default"], "limit": 5},
        headers=bearer(WORK),
    ).json()["leases"]
    assert [held["job_id"] for held in leases] == [good]
    failed = client.get(f"/v1/jobs/{bad}", headers=H).json()
    assert failed["state"] == "failed" and "args cannot be decoded" in failed["last_error"]
