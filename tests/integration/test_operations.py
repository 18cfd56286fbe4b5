"""Operator SQL from migration 0002 and retention: pause/resume, worker_status,
stuck_jobs, prune_jobs() and the pruner's one-leader batches."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from broker import Broker, InvalidJobError
from broker.cli import main
from broker.pruner import PrunerConfig, prune_batch, prune_once
from tests.dbtime import advance_db_time

Conn = psycopg.Connection[tuple[Any, ...]]


def finish(broker: Broker, kind: str, outcome: str) -> int:
    job = broker.enqueue(kind, {"k": kind})
    [held] = broker.claim(["default"], 1, "w:1")
    assert held.job_id == job.id
    if outcome == "succeeded":
        broker.complete(held, {"ok": True})
    elif outcome == "failed":
        broker.fail(held, "boom", retryable=False)
    else:
        broker.cancel(job.id)
        broker.cancel_ack_many([(held, "stopped")])
    broker.append_logs([(held, "a log line")])
    return job.id


def test_paused_queue_is_not_claimed_until_resumed(broker: Broker, db_url: str, conn: Conn) -> None:
    job = broker.enqueue("t", queue="mail")
    conn.execute("SELECT broker.pause_queue('mail', 'provider outage')")
    assert broker.claim(["mail", "default"], 10, "w:1") == []
    assert conn.execute(
        "SELECT paused FROM broker.queue_stats WHERE queue = 'mail'"
    ).fetchone() == (True,)
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("LISTEN broker_jobs")
        assert conn.execute("SELECT broker.resume_queue('mail')").fetchone() == (True,)
        assert [n.payload for n in listener.notifies(timeout=2, stop_after=1)] == ["mail"]
    assert conn.execute("SELECT broker.resume_queue('mail')").fetchone() == (False,)
    [held] = broker.claim(["mail"], 10, "w:1")
    assert held.job_id == job.id


def test_worker_status_by_database_time(conn: Conn) -> None:
    host = uuid.uuid4()
    for seq in (1, 2, 3):
        conn.execute(
            "INSERT INTO broker.workers (worker_id, host_id, seq, hostname, pid, stopped_at)"
            " VALUES (%s, %s, %s, 'h', 1, CASE WHEN %s = 3 THEN now() END)",
            (f"{host}:{seq}", host, seq, seq),
        )
    conn.execute("UPDATE broker.workers SET last_seen = now() - interval '5 minutes' WHERE seq = 2")
    rows = conn.execute("SELECT seq, status FROM broker.worker_status ORDER BY seq").fetchall()
    assert rows == [(1, "alive"), (2, "gone"), (3, "stopped")]


def test_stuck_jobs_reasons(broker: Broker, conn: Conn) -> None:
    expired = broker.enqueue("a").id
    cancel = broker.enqueue("b").id
    waiting = broker.enqueue("c", queue="nobody-serves-this").id
    for held in broker.claim(["default"], 2, "w:1", lease_ttl=5):
        if held.job_id == cancel:
            broker.cancel(cancel)
            broker.heartbeat([held], 3600)
    assert conn.execute("SELECT count(*) FROM broker.stuck_jobs").fetchone() == (0,)
    advance_db_time(conn, 11 * 60)
    rows = conn.execute("SELECT id, reason FROM broker.stuck_jobs ORDER BY id").fetchall()
    assert rows == [
        (expired, "lease_expired"),
        (cancel, "cancel_unacknowledged"),
        (waiting, "waiting"),
    ]


def test_prune_jobs_deletes_old_finished_jobs_with_history(broker: Broker, conn: Conn) -> None:
    done = finish(broker, "old", "succeeded")
    failed = finish(broker, "old", "failed")
    queued = broker.enqueue("still-queued", queue="elsewhere").id
    advance_db_time(conn, 2 * 86400)
    fresh = finish(broker, "new", "succeeded")

    assert conn.execute("SELECT broker.prune_jobs('succeeded', '1 day')").fetchone() == (1,)
    remaining = {r[0] for r in conn.execute("SELECT id FROM broker.jobs").fetchall()}
    assert remaining == {failed, queued, fresh}
    events = conn.execute(
        "SELECT count(*) FROM broker.job_events WHERE job_id = %s", (done,)
    ).fetchone()
    assert events == (0,)
    with pytest.raises(InvalidJobError, match="only finished jobs"):
        broker.run(prune_batch("queued", 0, 10))


def test_pruner_batches_per_state_and_one_leader(broker: Broker, db_url: str, conn: Conn) -> None:
    ids = [finish(broker, "k", "succeeded") for _ in range(5)] + [finish(broker, "k", "failed")]
    advance_db_time(conn, 3 * 86400)
    config = PrunerConfig(retention={"succeeded": 86400.0, "failed": 86400.0 * 7}, batch=2)

    with psycopg.connect(db_url) as leader:
        leader.execute("SELECT pg_advisory_xact_lock(hashtext('\"broker\".pruner'))")
        assert prune_once(broker, config) is None, "a second process must not prune"
        leader.rollback()

    assert prune_once(broker, config) == {"succeeded": 5, "failed": 0}
    assert conn.execute("SELECT array_agg(id) FROM broker.jobs").fetchone() == ([ids[-1]],)


def test_prune_command(broker: Broker, db_url: str, conn: Conn) -> None:
    finish(broker, "k", "succeeded")
    advance_db_time(conn, 3600)
    runner = CliRunner()
    env = {"BROKER_DATABASE_URL": db_url}
    result = runner.invoke(main, ["prune", "--json"], env=env)
    assert (result.exit_code, result.output.strip()) == (
        0,
        '{"succeeded": 0, "cancelled": 0, "failed": 0}',
    )
    result = runner.invoke(main, ["prune", "--state", "succeeded", "--older-than", "30m"], env=env)
    assert (result.exit_code, result.output.strip()) == (0, "pruned 1 succeeded")
    result = runner.invoke(main, ["prune", "--older-than", "soon"], env=env)
    assert result.exit_code == 2 and "a duration: seconds, or with units" in result.output


def test_pruner_config_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROKER_RETENTION_FAILED", "30d")
    monkeypatch.setenv("BROKER_PRUNE_INTERVAL", "0")
    config = PrunerConfig.from_env()
    assert config.retention["failed"] == 30 * 86400
    assert config.retention["succeeded"] == 86400
    assert not config.enabled
    monkeypatch.setenv("BROKER_PRUNE_INTERVAL", "5m")
    assert PrunerConfig.from_env().interval == 300 and PrunerConfig.from_env().enabled
