"""The hot statements keep their access path however much history broker.jobs holds.

psycopg prepares a statement after 5 executions and the server may then switch it to a
generic plan, built without the parameter values. Each hot statement is PREPAREd here with
$n parameters exactly as the broker sends it and EXPLAIN EXECUTEd under both
`force_generic_plan` and `force_custom_plan`, on a table holding millions of finished jobs
whose partial indexes are full of dead entries from claim/complete churn (autovacuum off,
statistics fresh). A plain EXPLAIN would plan with the values inlined and pass statements
whose generic plan collapses (docs/decisions/009-history-proof-plans.md).

The statements come from the broker.lease constructors, keyed by role, so the test follows
the transitions wherever their SQL lives.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from broker import inspection, lease
from broker._queries import queries
from broker.client import Broker
from broker.lease import Failure, Lease, Statement
from broker.pruner import prune_batch
from broker.spec import JobSpec
from tests.conftest import create_database, drop_database

HISTORY_ROWS = int(os.environ.get("BROKER_PLAN_TEST_ROWS", "2000000"))
CHURN_ROWS = 20_000  # claimed and completed once: dead entries in the partial indexes
HELD = 100  # jobs left running for the fenced statements to name
WORKER = "plan-test:1"
CHANNEL = "broker_jobs"

# Role -> statement builders. A role's statements may only reach broker.jobs through these
# indexes, each with an index condition (a lookup or a range, never a full index scan).
Build = Callable[[list[Lease]], Statement[Any]]
ROLES: dict[str, tuple[set[str], list[Build]]] = {
    # _claim_flow's own statements are checked by test_flow_claim_keeps_its_access_path.
    "claim": (
        {"jobs_claim_idx", "jobs_pkey"},
        [
            lambda held: lease.claim(["default"], 100, WORKER, 15.0),
            lambda held: lease.claim(["default", "other"], 100, WORKER, 15.0),
            lambda held: lease.claim([f"q{i}" for i in range(50)] + ["default"], 100, WORKER, 15.0),
        ],
    ),
    "heartbeat": ({"jobs_pkey"}, [lambda held: lease.heartbeat(held, 15.0)]),
    "finish": (
        {"jobs_pkey"},
        [
            lambda held: lease.finish([lease.completed(h, {"ok": True}) for h in held], CHANNEL),
            # Every outcome in one statement, as the worker's writer sends them.
            lambda held: lease.finish(
                [
                    [
                        lease.completed(h),
                        lease.failed(h, Failure("boom")),
                        lease.cancel_acked(h, "cancelled"),
                        lease.released(h),
                        lease.snoozed(h, 5.0),
                    ][i % 5]
                    for i, h in enumerate(held)
                ],
                CHANNEL,
            ),
        ],
    ),
    "reap": ({"jobs_lease_idx", "jobs_pkey"}, [lambda held: lease.reap()]),
    "expire": ({"jobs_deadline_idx", "jobs_pkey"}, [lambda held: lease.expire()]),
    "log": ({"jobs_pkey"}, [lambda held: lease.append_logs([(h, "line") for h in held])]),
}
# Operator reads that must not grow with the history: they may read only the indexes that
# hold live rows (waiting, queued, running), in full; finished counts come from broker.job_counts.
READS: dict[str, Callable[[], Statement[Any]]] = {
    "queues_list": inspection.queues,
    "stats_overview": inspection.overview,
    "metrics_snapshot": inspection.metrics_snapshot,
    "workers_list": inspection.workers,
}
LIVE_INDEXES = {"jobs_claim_idx", "jobs_lease_idx", "jobs_waiting_idx"}
CASES = [
    pytest.param(role, i, id=f"{role}-{i}")
    for role, (_, builders) in ROLES.items()
    for i in range(len(builders))
]
MODES = ("force_generic_plan", "force_custom_plan")


@pytest.fixture(scope="module")
def history(pg_server_url: str, template_db: str) -> Iterator[tuple[str, list[Lease]]]:
    """A database with HISTORY_ROWS succeeded jobs, churned partial indexes, and HELD leases."""
    name = f"brk_plans_{os.getpid()}"
    url = create_database(pg_server_url, name, template=template_db)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            # Deterministic: no vacuum cleans the dead index entries between statements.
            conn.execute("ALTER TABLE broker.jobs SET (autovacuum_enabled = false)")
            conn.execute(
                "INSERT INTO broker.jobs (kind, args, state, attempts, lease_epoch, worker_id,"
                " run_at, created_at, started_at, finished_at)"
                " SELECT 'history', '{\"n\": 1}', 'succeeded', 1, 1, 'old:1', t, t, t, t"
                " FROM (SELECT now() - interval '1 day' + g * interval '1 ms' AS t"
                "       FROM generate_series(1, %s) g) s",
                [HISTORY_ROWS],
            )
            conn.execute(
                "INSERT INTO broker.jobs (kind) SELECT 'churn' FROM generate_series(1, %s)",
                [CHURN_ROWS + HELD],
            )
        with Broker.connect(url, max_size=2) as broker:
            claimed: list[Lease] = []
            # The held leases outlive the module however slow the machine: a lease that
            # expired mid-module would be reaped by the reaper's plan test.
            while batch := broker.claim(["default"], 1000, WORKER, lease_ttl=86400.0):
                claimed.extend(batch)
            held, done = claimed[:HELD], claimed[HELD:]
            for i in range(0, len(done), 1000):
                broker.complete_many([(d, None) for d in done[i : i + 1000]])
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ANALYZE broker.jobs")
        yield url, held
    finally:
        drop_database(pg_server_url, name)


def _positional(text: str, params: dict[str, Any]) -> tuple[str, list[Any]]:
    """The named query with $n placeholders, and its values in that order."""
    order: list[str] = []

    def number(m: re.Match[str]) -> str:
        if m.group(1) not in order:
            order.append(m.group(1))
        return f"${order.index(m.group(1)) + 1}"

    return re.sub(r"%\((\w+)\)s", number, text).replace("%%", "%"), [params[n] for n in order]


def _explained(conn: psycopg.Connection[Any], stmt: Statement[Any], mode: str) -> list[Any]:
    """EXPLAIN (FORMAT JSON) of `stmt` prepared and executed under `mode`."""
    text, values = _positional(queries("broker")[stmt.query], dict(stmt.params))
    conn.execute("DEALLOCATE ALL")
    conn.execute(f"PREPARE hot AS {text}")
    conn.execute(f"SET plan_cache_mode = {mode}")
    args = f"({', '.join(['%s'] * len(values))})" if values else ""
    row = conn.execute(f"EXPLAIN (FORMAT JSON) EXECUTE hot{args}", values).fetchone()
    assert row is not None
    return list(row[0] if isinstance(row[0], list) else json.loads(row[0]))


def _plan(conn: psycopg.Connection[Any], stmt: Statement[Any], mode: str) -> dict[str, Any]:
    return dict(_explained(conn, stmt, mode)[0]["Plan"])


def _scans_of_jobs(
    node: dict[str, Any], relation: str = "jobs"
) -> Iterator[tuple[str, str | None, str | None]]:
    """(node type, index, index condition) for every node reading broker.jobs (or another
    `relation`)."""
    if node.get("Relation Name") == relation and node.get("Node Type") != "ModifyTable":
        kind = node["Node Type"]
        if kind == "Bitmap Heap Scan":
            yield from _bitmap_scans(kind, node)
        else:
            yield kind, node.get("Index Name"), node.get("Index Cond")
    for child in node.get("Plans", []):
        yield from _scans_of_jobs(child, relation)


def _bitmap_scans(kind: str, node: dict[str, Any]) -> Iterator[tuple[str, str | None, str | None]]:
    # The index scans under a bitmap heap scan, through any BitmapOr / BitmapAnd.
    for child in node.get("Plans", []):
        if child.get("Node Type") in ("BitmapOr", "BitmapAnd"):
            yield from _bitmap_scans(kind, child)
        else:
            yield kind, child.get("Index Name"), child.get("Index Cond")


def access_path_violations(
    plan: dict[str, Any], allowed: set[str], keyed: bool = True, relation: str = "jobs"
) -> list[str]:
    """Every read of broker.jobs (or `relation`) that is not on an allowed index, or
    (`keyed`) that is not a lookup or range on it."""
    bad = []
    for kind, index, cond in _scans_of_jobs(plan, relation):
        if index is None or index not in allowed or (keyed and cond is None):
            bad.append(f"{kind} on {index or 'jobs'} (condition {cond})")
    return bad


@pytest.fixture
def client_conn(history: tuple[str, list[Lease]]) -> Iterator[psycopg.Connection[Any]]:
    url, _ = history
    # Client-side binding renders the values as typed literals inside EXPLAIN EXECUTE.
    with psycopg.connect(url, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
        yield conn


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("role", "index"), CASES)
def test_hot_statement_keeps_its_access_path(
    history: tuple[str, list[Lease]],
    client_conn: psycopg.Connection[Any],
    role: str,
    index: int,
    mode: str,
) -> None:
    _, held = history
    allowed, builders = ROLES[role]
    stmt = builders[index](held)
    plan = _plan(client_conn, stmt, mode)
    assert list(_scans_of_jobs(plan)), f"{stmt.query} never reads broker.jobs?"
    assert access_path_violations(plan, allowed) == [], json.dumps(plan, indent=1)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", READS)
def test_operator_reads_skip_the_history(
    client_conn: psycopg.Connection[Any], name: str, mode: str
) -> None:
    plan = _plan(client_conn, READS[name](), mode)
    assert access_path_violations(plan, LIVE_INDEXES, keyed=False) == [], json.dumps(plan)


# The operator UI's own reads and bulk writes: each on its index, with a condition. A
# bulk retry may read failed and cancelled jobs from jobs_finished_idx when statistics say
# there are few (here: none); it is planned with its values every time (prepare=False),
# so a large failed history gets the primary-key lookups instead.
UI_STATEMENTS: dict[str, tuple[set[str], Callable[[list[Lease]], Statement[Any]]]] = {
    "recent_outcomes": ({"jobs_finished_idx"}, lambda held: inspection.recent_outcomes()),
    "groups": ({"jobs_group_idx"}, lambda held: inspection.groups("a", 100)),
    "cancel_many": ({"jobs_pkey"}, lambda held: lease.cancel_many([h.job_id for h in held])),
    "retry_many": (
        {"jobs_pkey", "jobs_finished_idx"},
        lambda held: lease.retry_many([h.job_id for h in held]),
    ),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", UI_STATEMENTS)
def test_ui_statements_keep_their_index(
    history: tuple[str, list[Lease]], client_conn: psycopg.Connection[Any], name: str, mode: str
) -> None:
    _, held = history
    allowed, build = UI_STATEMENTS[name]
    stmt = build(held)
    if stmt.prepare is False and mode == "force_generic_plan":
        pytest.skip("planned with its values on every run: no generic plan is ever used")
    plan = _plan(client_conn, stmt, mode)
    assert list(_scans_of_jobs(plan)), f"{name} never reads broker.jobs?"
    assert access_path_violations(plan, allowed) == [], json.dumps(plan, indent=1)


def test_the_check_catches_a_state_predicate_index(
    history: tuple[str, list[Lease]], client_conn: psycopg.Connection[Any]
) -> None:
    # The index migration 0003 removed, put back inside a rolled-back transaction: the
    # complete statement's plan then reads every running row through it (the 10-18x drain
    # slowdown at 5M retained jobs), and the check above reports it.
    _, held = history
    with client_conn.transaction(force_rollback=True):
        client_conn.execute(
            "CREATE INDEX jobs_running_idx ON broker.jobs (id) WHERE state = 'running'"
        )
        client_conn.execute("ANALYZE broker.jobs")
        plan = _plan(
            client_conn, lease.finish([lease.completed(h) for h in held], CHANNEL), MODES[0]
        )
        violations = access_path_violations(plan, {"jobs_pkey"})
    assert any("jobs_running_idx" in v for v in violations), json.dumps(plan, indent=1)


FLOW_ALLOWED = {
    "jobs_claim_idx",
    "jobs_keyed_idx",
    "jobs_key_running_idx",
    "jobs_lease_idx",
    "jobs_pkey",
}


def _nested_plans(conn: psycopg.Connection[Any], run: Callable[[], Any]) -> list[dict[str, Any]]:
    """The plans of every statement `run` executes, functions' statements included
    (auto_explain, logged to this client as notices)."""
    plans: list[dict[str, Any]] = []

    def collect(diag: psycopg.errors.Diagnostic) -> None:
        text = diag.message_primary or ""
        if "plan:" in text:
            logged = json.loads(text.split("plan:", 1)[1])
            plans.append({**logged["Plan"], "Query Text": logged.get("Query Text")})

    conn.add_notice_handler(collect)
    try:
        conn.execute("LOAD 'auto_explain'")
    except psycopg.errors.UndefinedFile:
        pytest.skip("no auto_explain on this server (pgserver's build ships no contrib modules)")
    for name, value in (
        ("log_min_duration", "0"),
        ("log_nested_statements", "on"),
        ("log_format", "json"),
        ("log_level", "notice"),
    ):
        conn.execute(f"SET auto_explain.{name} = {value}")
    try:
        run()
    finally:
        conn.execute("SET auto_explain.log_min_duration = -1")
        conn.remove_notice_handler(collect)
    return plans


@pytest.mark.parametrize("mode", MODES)
def test_flow_claim_keeps_its_access_path(history: tuple[str, list[Lease]], mode: str) -> None:
    # _claim_flow's statements run inside a plpgsql function, where EXPLAIN of the claim
    # cannot see them: auto_explain shows each, under both plan modes (plpgsql prepares them
    # after the fifth run, as psycopg does).
    url, _ = history
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "SELECT broker.configure_queue('flow', concurrency_limit => 1000,"
            " rate_limit => 100000, rate_period => '1 hour')"
        )
        conn.execute(
            "INSERT INTO broker.jobs (kind, queue, concurrency_key)"
            " SELECT 'flow', 'flow', CASE WHEN g % 2 = 0 THEN 'k' || (g % 10) END"
            " FROM generate_series(1, 200) g"
        )
        conn.execute(f"SET plan_cache_mode = {mode}")
        stmt = lease.claim(["flow", "default"], 3, WORKER, 15.0)
        text = queries("broker")[stmt.query]
        try:
            with conn.transaction(force_rollback=True):
                for _ in range(6):
                    conn.execute(text, dict(stmt.params), prepare=False)
                plans = _nested_plans(
                    conn, lambda: conn.execute(text, dict(stmt.params), prepare=False)
                )
        finally:
            conn.execute("DELETE FROM broker.jobs WHERE queue = 'flow'")
            conn.execute("DELETE FROM broker.queues WHERE name = 'flow'")
    assert len(plans) >= 4, "auto_explain logged no nested statements"
    # Every read is a lookup or range on an allowed index, but for the running count of a
    # limited queue: all of jobs_lease_idx, which holds running jobs only (decision 014).
    bad = [
        f"{v} in {plan['Query Text']}"
        for plan in plans
        for v in access_path_violations(plan, FLOW_ALLOWED)
        # Any scan form (index, index-only, bitmap) of the whole index.
        if not v.endswith("on jobs_lease_idx (condition None)")
    ]
    assert bad == [], json.dumps(plans, indent=1)


def _worker_setting(db_url: str, service: str, setting: str) -> str:
    """`setting` as the worker's connection for `service` has it once opened."""
    import asyncio

    from broker.worker._conn import Connection

    async def show() -> str:
        conn = Connection(db_url, "broker", service)
        try:
            raw = await conn._open()
            row = await (await raw.execute(f"SHOW {setting}")).fetchone()
            assert row is not None
            return str(row[0])
        finally:
            await conn.close()

    return asyncio.run(show())


def test_the_worker_claim_connection_asks_for_generic_plans(db_url: str) -> None:
    """Both of the worker's statement connections (claims and heartbeats; writes, reaper,
    pruner and scheduler) run on the generic plans this file checks (SESSION_SETTINGS);
    any other keeps the server's default."""
    assert _worker_setting(db_url, "lease", "plan_cache_mode") == "force_generic_plan"
    assert _worker_setting(db_url, "work", "plan_cache_mode") == "force_generic_plan"
    assert _worker_setting(db_url, "other", "plan_cache_mode") == "auto"


def test_the_worker_statement_connections_never_jit_compile(db_url: str) -> None:
    """A generic plan is costed with default guesses, so on a big backlog the claim's
    estimate passes jit_above_cost and would be compiled on every run (decision 030).
    Both statement connections turn JIT off: with every plan over the threshold
    (jit_above_cost = 0), the prepared claim's generic plan in their session settings
    still has no JIT step."""
    from broker.worker._conn import SESSION_SETTINGS

    claim = lease.claim(["default"], 100, WORKER, 30.0)
    for service in ("lease", "work"):
        assert _worker_setting(db_url, service, "jit") == "off"
        with psycopg.connect(db_url, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
            for setting in SESSION_SETTINGS[service]:
                conn.execute(setting)
            conn.execute("SET jit_above_cost = 0")
            explained = _explained(conn, claim, "force_generic_plan")
        assert "JIT" not in explained[0], explained


# The tables that grow with the history, and the indexes the worker's functions and
# triggers may read them through.
GROWING: dict[str, set[str]] = {
    "jobs": FLOW_ALLOWED | {"jobs_finished_idx", "jobs_deadline_idx", "jobs_idempotency_key_idx"},
    "job_events": {"job_events_job_idx"},
    "job_logs": {"job_logs_job_idx"},
    "job_dependencies": {"job_dependencies_pkey", "job_dependencies_parent_idx"},
}


def _rows(conn: psycopg.Connection[Any], stmt: Statement[Any]) -> list[Any]:
    return conn.execute(queries("broker")[stmt.query], dict(stmt.params), prepare=False).fetchall()


def _leases(conn: psycopg.Connection[Any], queue: str) -> list[Lease]:
    rows = conn.execute(
        "UPDATE broker.jobs SET state = 'running', attempts = 1, lease_epoch = 1,"
        " lease_expires_at = now() + interval '1 minute', worker_id = %s, started_at = now()"
        " WHERE queue = %s RETURNING id, lease_epoch, queue, kind",
        [WORKER, queue],
    ).fetchall()
    return [Lease(i, e, q, k, {}, 0, 1, 1, None, WORKER) for i, e, q, k in rows]


def _worker_function_reads(url: str, mode: str) -> list[str]:
    """Every read of a growing table, not a lookup or range on an allowed index, by the
    statements (nested ones included) that the worker's writes, reaper, pruner and
    scheduler run under `mode`: on jobs with waiters, keys and dependents two levels deep,
    inside a rolled-back transaction."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"SET plan_cache_mode = {mode}")
        with conn.transaction(force_rollback=True):
            conn.execute(
                "INSERT INTO broker.jobs (kind, queue, max_attempts, concurrency_key)"
                " SELECT 'fn', CASE WHEN g % 3 = 0 THEN 'fn-reap' ELSE 'fn-done' END, 1,"
                " CASE WHEN g % 5 = 0 THEN 'k' || g END FROM generate_series(1, 60) g"
            )
            for parents, children in (("fn-%", "fn-child"), ("fn-child", "fn-grandchild")):
                conn.execute(
                    "SELECT broker.enqueue('fn', queue => %s, depends_on => ARRAY[id])"
                    " FROM broker.jobs WHERE queue LIKE %s",
                    [children, parents],
                )
            conn.execute(
                "INSERT INTO broker.job_waiters (job_id, expires_at)"
                " SELECT id, now() + interval '1 minute' FROM broker.jobs WHERE queue = 'fn-done'"
            )
            conn.execute(
                "INSERT INTO broker.jobs (kind, queue, deadline)"
                " SELECT 'fn', 'fn-late', now() - interval '1 minute' FROM generate_series(1, 5)"
            )
            done, reaped = _leases(conn, "fn-done"), _leases(conn, "fn-reap")
            conn.execute(
                "UPDATE broker.jobs SET lease_expires_at = now() - interval '1 minute'"
                " WHERE queue = 'fn-reap'"
            )
            outcomes = [
                lease.completed(h) if i % 2 else lease.failed(h, Failure("boom", retryable=False))
                for i, h in enumerate(done)
            ]
            scheduled = JobSpec("fn", queue="fn-scheduled", idempotency_key="schedule:fn:1")

            def worker_paths() -> None:
                assert len(_rows(conn, lease.finish(outcomes, CHANNEL))) == len(done)
                assert len(_rows(conn, lease.reap())) == len(reaped)
                assert len(_rows(conn, lease.expire())) == 5
                assert _rows(conn, prune_batch("succeeded", 3600.0, 1000)) == [(1000,)]
                for _ in range(2):  # the second finds the tick's key taken
                    _rows(conn, lease.enqueue_many([scheduled]))

            plans = _nested_plans(conn, worker_paths)
            cancelled = conn.execute(
                "SELECT count(*) FROM broker.jobs WHERE queue = 'fn-grandchild'"
                " AND state = 'cancelled'"
            ).fetchone()
    assert len(plans) >= 10, "auto_explain logged no nested statements"
    # The dependency cascade ran (grandchildren of failed parents were cancelled).
    assert cancelled is not None and cancelled[0] > 0
    return [
        f"{v} in {plan['Query Text']}"
        for plan in plans
        for relation, allowed in GROWING.items()
        for v in access_path_violations(plan, allowed, relation=relation)
    ]


def test_worker_functions_plan_no_worse_on_the_shared_connection(
    history: tuple[str, list[Lease]],
) -> None:
    # The worker's shared connection asks for generic plans (SESSION_SETTINGS, for the
    # claim), and every plpgsql statement its other services reach inherits that: the
    # jobs trigger with waiters, keys and dependents (_count_finished,
    # _resolve_dependents), the pruner's prune_jobs() and the scheduler's enqueue_many().
    # None may read more under generic plans than with its values, as the services' own
    # connections planned it before (decision 025). With its values, some read a live
    # partial index whole (the waiting jobs; here, the whole history is past retention).
    url, _ = history
    custom = Counter(_worker_function_reads(url, "force_custom_plan"))
    generic = Counter(_worker_function_reads(url, "force_generic_plan"))
    assert generic - custom == Counter(), "\n\n".join(generic - custom)
