"""One table of edge cases through all five enqueue doors, one verdict per case everywhere.

The doors: `Broker.enqueue` (Python), `POST /v1/jobs` (REST), `broker enqueue` (CLI),
`broker enqueue --file` (file) and SQL `broker.enqueue(...)`. Each case is a job spec at
the level of values (a kind of 201 characters, a priority one past the integer range, args
nested 65 deep); each door is handed the same value in its own syntax and must accept or
refuse it as the table says, refusing cleanly: InvalidJobError, a 4xx problem, exit code 2
with one line, a data or check error from PostgreSQL. A few cases cannot be said at every
door (SQL arguments are typed, so there is no string priority; a shell argument cannot
hold NUL, but the CLI is driven in-process here, so it gets the same string anyway); those
doors are listed as not applicable, with the reason. docs/decisions/008-job-contract.md
shows the same table (a test below keeps the two equal).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from litestar.testing import TestClient

from broker import Broker, InvalidJobError
from broker.cli import main

ROOT = Path(__file__).resolve().parents[2]
DOORS = ("python", "rest", "cli", "file", "sql")
ACCEPTED, REFUSED = "accepted", "refused"
TYPED = "SQL arguments are typed by broker.enqueue's signature"
TEXT_OPTION = "CLI options are text parsed by their option type"
SESSION_ZONE = "a SQL timestamp without offset is in the session's time zone"
Conn = psycopg.Connection[tuple[Any, ...]]


@dataclass(frozen=True)
class Case:
    """A job spec (field -> value; `deep` nests args that deep, counting args itself) and
    the verdict every door must give, except those in `not_at` (door -> why)."""

    name: str
    fields: dict[str, Any]
    verdict: str
    deep: int | None = None
    not_at: dict[str, str] = field(default_factory=dict)


def ok(name: str, deep: int | None = None, **fields: Any) -> Case:
    return Case(name, fields, ACCEPTED, deep)


def no(name: str, not_at: dict[str, str] | None = None, **fields: Any) -> Case:
    return Case(name, fields, REFUSED, fields.pop("deep", None), not_at or {})


def meta_nested(depth: int) -> dict[str, Any]:
    """An object `depth` deep (`{}` is 1), built without recursion."""
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"m": value}
    return value


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

CASES = [
    ok("kind only", kind="k"),
    ok("kind of 200 characters", kind="k" * 200),
    no("kind of 201 characters", kind="k" * 201),
    no("empty kind", kind=""),
    no("kind with a space", kind="send email"),
    no("NUL in kind", kind="k\x00"),
    no("lone surrogate in kind", kind="k\ud800"),
    ok("queue of 128 characters", queue="q" * 128),
    no("queue of 129 characters", queue="q" * 129),
    ok("priority 2147483647", priority=2**31 - 1),
    ok("priority -2147483648", priority=-(2**31)),
    no("priority 2147483648", priority=2**31),
    no("priority -2147483649", priority=-(2**31) - 1),
    no('priority "5" (a string)', {"cli": TEXT_OPTION, "sql": TYPED}, priority="5"),
    ok("max_attempts 1000", max_attempts=1000),
    no("max_attempts 1001", max_attempts=1001),
    no("max_attempts 0", max_attempts=0),
    no("max_attempts 1.0 (a float)", {"sql": TYPED}, max_attempts=1.0),
    ok("delay 0", delay=0),
    ok("delay of 400 days", delay=400 * 86400),
    ok("delay of 100 years", delay=3_155_760_000),
    no("delay of 100 years and 1 s", delay=3_155_760_001),
    no("negative delay", delay=-1),
    ok("timeout of 100 years", timeout=3_155_760_000),
    no("timeout 0", timeout=0),
    no("negative timeout", timeout=-5),
    ok("run_at 0001-01-02T00:00:00Z", run_at="0001-01-02T00:00:00+00:00"),
    no("run_at 0001-01-01T23:59:59Z", run_at="0001-01-01T23:59:59+00:00"),
    ok("run_at 9999-12-30T23:59:59Z", run_at="9999-12-30T23:59:59+00:00"),
    no("run_at 9999-12-31T00:00:00Z", run_at="9999-12-31T00:00:00+00:00"),
    no("run_at 9999-12-31T23:59:59Z", run_at="9999-12-31T23:59:59+00:00"),
    no("run_at without a UTC offset", {"sql": SESSION_ZONE}, run_at="2030-01-01T00:00:00"),
    no("run_at 12345 (a number)", {"cli": TEXT_OPTION, "sql": TYPED}, run_at=12345),
    no("run_at and delay together", run_at="2030-01-01T00:00:00+00:00", delay=5),
    ok("idempotency key of 200 characters", idempotency_key="i" * 200),
    no("idempotency key of 201 characters", idempotency_key="i" * 201),
    no("idempotency key of 300 characters", idempotency_key="i" * 300),
    no("empty idempotency key", idempotency_key=""),
    no("idempotency key with a space", idempotency_key="order 7"),
    ok("subject key of 200 characters", subject_key="s" * 200),
    no("subject key of 201 characters", subject_key="s" * 201),
    ok("32 tags", tags=[f"t{n}" for n in range(32)]),
    no("33 tags", tags=[f"t{n}" for n in range(33)]),
    no("100 tags", tags=[f"t{n}" for n in range(100)]),
    ok("tag of 64 characters", tags=["t" * 64]),
    no("tag of 65 characters", tags=["t" * 65]),
    no("empty tag", tags=[""]),
    no("tag with a newline", tags=["a\nb"]),
    no("NUL in a tag", tags=["t\x00"]),
    no("lone surrogate in a tag", tags=["\udc80"]),
    ok("args with non-ASCII text", args={"name": "Zoë 🚀", "ok": True}),
    ok("args nested 64 deep", deep=64),
    no("args nested 65 deep", deep=65),
    no("args nested 2,000 deep", deep=2000),
    no("NUL in an args value", args={"a": "x\x00y"}),
    no("NUL in an args key", args={"a\x00": 1}),
    no("lone surrogate in an args value", args={"a": "\ud800"}),
    no("args a JSON array", args=[1, 2]),
    # PARENT stands for the id of a job that exists (each door's test enqueues one).
    ok("depends_on an existing job", depends_on=["PARENT"]),
    ok("depends_on 100 ids (one job named 100 times)", depends_on=["PARENT"] * 100),
    no("depends_on 101 ids", depends_on=["PARENT"] * 101),
    no("depends_on a job that does not exist", depends_on=[2**40]),
    no("depends_on 0", depends_on=[0]),
    no('depends_on "1" (a string)', {"cli": TEXT_OPTION, "sql": TYPED}, depends_on="1"),
    ok("group of 128 characters", group="g" * 128),
    no("group of 129 characters", group="g" * 129),
    no("empty group", group=""),
    no("group with a space", group="two words"),
    ok("concurrency key of 200 characters", concurrency_key="c" * 200),
    no("concurrency key of 201 characters", concurrency_key="c" * 201),
    no("concurrency key with a space", concurrency_key="tenant 7"),
    ok("deadline 9999-12-30T23:59:59Z", deadline="9999-12-30T23:59:59+00:00"),
    no("deadline 9999-12-31T00:00:00Z", deadline="9999-12-31T00:00:00+00:00"),
    no("deadline without a UTC offset", {"sql": SESSION_ZONE}, deadline="2030-01-01T00:00:00"),
    ok("start_within 0", start_within=0),
    ok("start_within of 100 years", start_within=3_155_760_000),
    no("start_within of 100 years and 1 s", start_within=3_155_760_001),
    no("negative start_within", start_within=-1),
    no(
        "deadline and start_within together",
        deadline="2030-01-01T00:00:00+00:00",
        start_within=5,
    ),
    # meta is measured as PostgreSQL prints jsonb: {"k": "v"}, UTF-8, escapes included.
    ok("meta with a traceparent", meta={"traceparent": TRACEPARENT, "tracestate": "a=1"}),
    ok("meta nested 8 deep", meta=meta_nested(8)),
    no("meta nested 9 deep", meta=meta_nested(9)),
    ok("meta of 8192 bytes", meta={"k": "x" * 8183}),
    no("meta of 8193 bytes", meta={"k": "x" * 8184}),
    ok("meta of 8192 bytes with an escape and non-ASCII", meta={"kk\n": "é" * 4090}),
    no("meta of 8194 bytes with an escape and non-ASCII", meta={"kk\n": "é" * 4091}),
    no("meta a JSON array", meta=["traceparent"]),
    no("meta a string", meta=TRACEPARENT),
    no("a number in meta", meta={"sampled": 1}),
    no("null in meta", meta={"traceparent": None}),
    no("NUL in meta", meta={"traceparent": "x\x00"}),
    no("lone surrogate in meta", meta={"traceparent": "\ud800"}),
]
TIMES = ("run_at", "deadline")


def with_parent(case: Case, parent: int) -> Case:
    """`case` with PARENT replaced by the id of an existing job."""
    ids = case.fields.get("depends_on")
    if not isinstance(ids, list):
        return case
    resolved = [parent if i == "PARENT" else i for i in ids]
    return Case(
        case.name, {**case.fields, "depends_on": resolved}, case.verdict, case.deep, case.not_at
    )


def nested(depth: int) -> Any:
    """A list `depth` deep, built without recursion."""
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


def args_of(case: Case) -> Any:
    if case.deep is not None:
        return {"deep": nested(case.deep - 1)}
    return case.fields.get("args", {})


def args_json(case: Case) -> str:
    """args as JSON text, non-ASCII escaped (a lone surrogate travels as \\ud800)."""
    if case.deep is not None:
        return '{"deep": ' + "[" * (case.deep - 1) + "]" * (case.deep - 1) + "}"
    return json.dumps(case.fields.get("args", {}))


def spec_json(case: Case) -> str:
    """The whole spec as one JSON object (a REST body, a line of a jobs file)."""
    fields = {k: v for k, v in case.fields.items() if k != "args"}
    fields.setdefault("kind", "k")
    text = json.dumps({**fields, "args": "__args__"})
    return text.replace('"__args__"', args_json(case))


# --- the doors -----------------------------------------------------------------------------


def python_door(broker: Broker) -> Callable[[Case], str]:
    def enqueue(case: Case) -> str:
        options = {k: v for k, v in case.fields.items() if k not in ("kind", "args")}
        for name in TIMES:
            if isinstance(options.get(name), str):
                options[name] = datetime.fromisoformat(options[name])
        try:
            broker.enqueue(case.fields.get("kind", "k"), args_of(case), **options)
        except InvalidJobError:
            return REFUSED
        return ACCEPTED

    return enqueue


def rest_door(client: TestClient) -> Callable[[Case], str]:  # type: ignore[type-arg]
    from tests.api.conftest import SUBMIT, bearer

    headers = {**bearer(SUBMIT), "content-type": "application/json"}

    def enqueue(case: Case) -> str:
        r = client.post("/v1/jobs", content=spec_json(case).encode(), headers=headers)
        if r.status_code == 201:
            return ACCEPTED
        assert r.status_code in (400, 422), (r.status_code, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        return REFUSED

    return enqueue


def _cli(db_url: str, args: list[str]) -> str:
    env = {"BROKER_DATABASE_URL": db_url, "BROKER_SCHEMA": None, "BROKER_LEASE_TTL": None}
    try:
        runner = CliRunner(mix_stderr=False)  # type: ignore[call-arg]  # click < 8.2
    except TypeError:
        runner = CliRunner()
    done = runner.invoke(main, args, env=env, catch_exceptions=False, prog_name="broker")
    if done.exit_code == 0:
        return ACCEPTED
    assert done.exit_code == 2, (done.exit_code, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return REFUSED


def cli_door(db_url: str) -> Callable[[Case], str]:
    options = {
        "queue": "--queue",
        "priority": "--priority",
        "run_at": "--run-at",
        "delay": "--delay",
        "max_attempts": "--max-attempts",
        "timeout": "--timeout",
        "idempotency_key": "--idempotency-key",
        "subject_key": "--subject-key",
        "depends_on": "--depends-on",
        "group": "--group",
        "concurrency_key": "--concurrency-key",
        "deadline": "--deadline",
        "start_within": "--start-within",
    }

    def enqueue(case: Case) -> str:
        argv = ["enqueue", case.fields.get("kind", "k"), "--args", args_json(case)]
        for name, value in case.fields.items():
            if name in options:
                text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
                argv += [options[name], text]
        if "meta" in case.fields:
            argv += ["--meta", json.dumps(case.fields["meta"])]
        for tag in case.fields.get("tags", []):
            argv += ["--tag", tag]
        return _cli(db_url, argv)

    return enqueue


def file_door(db_url: str, tmp_path: Path) -> Callable[[Case], str]:
    def enqueue(case: Case) -> str:
        path = tmp_path / "jobs.jsonl"
        path.write_bytes(spec_json(case).encode() + b"\n")
        return _cli(db_url, ["enqueue", "--file", str(path)])

    return enqueue


def sql_door(conn: Conn) -> Callable[[Case], str]:
    casts = {
        "queue": "queue => %s",
        "priority": "priority => %s::integer",
        "run_at": "run_at => %s::timestamptz",
        "delay": "delay => make_interval(secs => %s)",
        "max_attempts": "max_attempts => %s::integer",
        "timeout": "timeout => make_interval(secs => %s)",
        "idempotency_key": "idempotency_key => %s",
        "subject_key": "subject_key => %s",
        "tags": "tags => %s::text[]",
        "depends_on": "depends_on => %s::bigint[]",
        "group": '"group" => %s',
        "concurrency_key": "concurrency_key => %s",
        "deadline": "deadline => %s::timestamptz",
        "start_within": "start_within => make_interval(secs => %s)",
        "meta": "meta => %s::jsonb",
    }

    def enqueue(case: Case) -> str:
        named = [
            (casts[k], json.dumps(v) if k == "meta" else v)
            for k, v in case.fields.items()
            if k in casts
        ]
        call = ", ".join(["%s", "%s::jsonb", *(sql for sql, _ in named)])
        params = [case.fields.get("kind", "k"), args_json(case), *(v for _, v in named)]
        try:
            conn.execute(f"SELECT broker.enqueue({call})", params)  # type: ignore[call-overload]
        except psycopg.Error as exc:
            # Refused by broker SQL (PB002), a CHECK (23514) or a data error (class 22);
            # psycopg itself refuses to send NUL in text (a DataError without SQLSTATE).
            state = exc.sqlstate
            assert state is None or state in ("PB002", "23514") or state.startswith("22"), exc
            return REFUSED
        except UnicodeEncodeError:
            return REFUSED  # a lone surrogate has no UTF-8 form to send
        return ACCEPTED

    return enqueue


@pytest.fixture
def door(
    request: pytest.FixtureRequest, db_url: str, broker: Broker, conn: Conn, tmp_path: Path
) -> Iterator[Callable[[Case], str]]:
    name = request.param
    if name == "rest":
        from api.app import create_app
        from api.config import ApiSettings, parse_tokens
        from broker.config import Settings
        from tests.api.conftest import TOKENS

        app = create_app(
            Settings(database_url=db_url), api_settings=ApiSettings(tokens=parse_tokens(TOKENS))
        )
        with TestClient(app, raise_server_exceptions=False) as client:
            yield rest_door(client)
        return
    yield {
        "python": lambda: python_door(broker),
        "cli": lambda: cli_door(db_url),
        "file": lambda: file_door(db_url, tmp_path),
        "sql": lambda: sql_door(conn),
    }[name]()


@pytest.mark.parametrize("door", DOORS, indirect=True)
def test_every_case_gets_the_tables_verdict(
    door: Callable[[Case], str], request: pytest.FixtureRequest, conn: Conn
) -> None:
    name = request.node.callspec.params["door"]
    row = conn.execute("SELECT broker.enqueue('parent')").fetchone()
    assert row is not None
    cases = [with_parent(c, row[0]) for c in CASES if name not in c.not_at]
    got = {c.name: door(c) for c in cases}
    assert got == {c.name: c.verdict for c in cases}
    accepted = sum(c.verdict == ACCEPTED for c in cases)
    assert conn.execute("SELECT count(*) FROM broker.jobs").fetchone() == (accepted + 1,)


def test_cases_cover_every_field() -> None:
    from broker.spec import JobSpec

    covered = {name for case in CASES for name in case.fields} | {"args"}
    assert covered == set(JobSpec.__struct_fields__)


def table() -> list[str]:
    """The table as docs/decisions/008-job-contract.md shows it."""
    rows = []
    for case in CASES:
        cells = ["n/a" if d in case.not_at else case.verdict for d in DOORS]
        rows.append(f"| {case.name} | " + " | ".join(cells) + " |")
    return rows


def test_the_decision_record_shows_this_table() -> None:
    text = (ROOT / "docs" / "decisions" / "008-job-contract.md").read_text()
    shown = [
        line for line in text.splitlines() if re.match(r"\| [^|]+ \| (accepted|refused|n/a)", line)
    ]
    assert shown == table()


def test_every_door_that_lets_the_queue_be_left_out_routes_by_one_rule(
    db_url: str, broker: Broker, conn: Conn, tmp_path: Path
) -> None:
    """A live worker declares `routed.kind` on `nc` (the row a worker writes at start).
    Python (the task not imported), REST and the CLI send an unnamed queue there; a job
    file line and SQL's broker.enqueue() name their queue, `default` when left out
    (decision 023)."""
    import uuid

    from api.app import create_app
    from api.config import ApiSettings, parse_tokens
    from broker.config import Settings
    from broker.worker import registry
    from tests.api.conftest import TOKENS

    meta = {"kinds": ["routed.kind"], "task_queues": {"routed.kind": "nc"}}
    broker.run(registry.register("h:1", uuid.uuid4(), 1, ["nc"], 4, "test", 0.0, meta))
    case = ok("routed", kind="routed.kind")
    app = create_app(
        Settings(database_url=db_url), api_settings=ApiSettings(tokens=parse_tokens(TOKENS))
    )
    with TestClient(app, raise_server_exceptions=False) as client:
        doors = {
            "python": python_door(broker),
            "rest": rest_door(client),
            "cli": cli_door(db_url),
            "file": file_door(db_url, tmp_path),
            "sql": sql_door(conn),
        }
        queues = {}
        for name, enqueue in doors.items():
            assert enqueue(case) == ACCEPTED, name
            row = conn.execute("SELECT queue FROM broker.jobs ORDER BY id DESC LIMIT 1").fetchone()
            assert row is not None
            queues[name] = row[0]
    routed = {"python": "nc", "rest": "nc", "cli": "nc"}
    assert queues == {**routed, "file": "default", "sql": "default"}
