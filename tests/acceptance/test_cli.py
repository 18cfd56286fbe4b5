"""The operator CLI (`broker enqueue | jobs | stats | workers`): tables, --json shapes,
one-line errors and exit codes (1 refused/failed, 2 bad input), against a real database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result

from broker import Broker
from broker.cli import main
from broker.lease import JobSpec

STATES = {"queued", "running", "succeeded", "failed", "cancelled"}
JOB_KEYS = {
    "id",
    "queue",
    "kind",
    "args",
    "priority",
    "state",
    "run_at",
    "attempts",
    "max_attempts",
    "lease_epoch",
    "lease_expires_at",
    "worker_id",
    "idempotency_key",
    "subject_key",
    "result",
    "last_error",
    "tags",
    "created_at",
    "started_at",
    "finished_at",
    "cancel_requested_at",
    "timeout",
    "group",
    "concurrency_key",
    "deadline",
    "depends_on",
}


def cli(db_url: str, *args: str, input: str | None = None) -> Result:
    """Run `broker ARGS` in-process on the test's database."""
    env = {"BROKER_DATABASE_URL": db_url, "BROKER_SCHEMA": None, "BROKER_LEASE_TTL": None}
    try:
        runner = CliRunner(mix_stderr=False)  # type: ignore[call-arg]  # click < 8.2
    except TypeError:
        runner = CliRunner()
    return runner.invoke(
        main, list(args), env=env, input=input, catch_exceptions=False, prog_name="broker"
    )


def one_error_line(result: Result) -> str:
    """The single `error: ...` line a failed command wrote to stderr."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def job_count(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM broker.jobs").fetchone()
    assert row is not None
    return int(row[0])


# --- enqueue ---------------------------------------------------------------------------


def test_enqueue_prints_the_id_and_applies_every_option(db_url: str, broker: Broker) -> None:
    result = cli(
        db_url,
        "enqueue",
        "send_email",
        "--args",
        '{"to": "a@example.com"}',
        "--queue",
        "emails",
        "--priority",
        "7",
        "--run-at",
        "2030-01-01T09:00:00+02:00",
        "--max-attempts",
        "3",
        "--timeout",
        "30",
        "--subject-key",
        "user:1",
        "--tag",
        "a",
        "--tag",
        "b",
    )
    assert result.exit_code == 0, result.stderr
    job = broker.get_job(int(result.stdout.strip()))
    assert (job.kind, job.args, job.queue, job.priority) == (
        "send_email",
        {"to": "a@example.com"},
        "emails",
        7,
    )
    assert job.run_at.isoformat() == "2030-01-01T07:00:00+00:00"
    assert job.max_attempts == 3
    assert job.timeout is not None and job.timeout.total_seconds() == 30
    assert (job.subject_key, job.tags) == ("user:1", ["a", "b"])


def test_enqueue_json_and_idempotent_repeat(db_url: str, conn: psycopg.Connection[Any]) -> None:
    first = cli(db_url, "enqueue", "k", "--idempotency-key", "key-1", "--json")
    assert first.exit_code == 0, first.stderr
    body = json.loads(first.stdout)
    assert body == {"id": body["id"], "created": True}
    again = cli(db_url, "enqueue", "k", "--idempotency-key", "key-1", "--json")
    assert json.loads(again.stdout) == {"id": body["id"], "created": False}
    plain = cli(db_url, "enqueue", "k", "--idempotency-key", "key-1")
    assert plain.stdout.strip() == str(body["id"])
    assert "already existed" in plain.stderr
    conflict = cli(db_url, "enqueue", "k", "--idempotency-key", "key-1", "--priority", "9")
    assert conflict.exit_code == 1
    assert "idempotency key 'key-1'" in one_error_line(conflict)
    assert job_count(conn) == 1


def test_enqueue_delay_is_measured_by_the_database(db_url: str, broker: Broker) -> None:
    result = cli(db_url, "enqueue", "later", "--delay", "3600")
    job = broker.get_job(int(result.stdout))
    assert (job.run_at - job.created_at).total_seconds() == pytest.approx(3600, abs=1)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["k", "--args", "{bad"], "--args is not valid JSON"),
        (["k", "--args", "[1, 2]"], "--args must be a JSON object"),
        (["bad kind!"], "KIND: Expected letters, digits, _ . : - only"),
        (["k", "--queue", "a b"], "--queue: Expected letters"),
        (["k", "--tag", ""], "--tag: Expected `str` of length >= 1"),
        (["k", "--run-at", "2030-01-01T09:00:00"], "--run-at needs a UTC offset"),
        (["k", "--run-at", "tomorrow"], "--run-at is not an ISO 8601 time"),
        (["k", "--delay", "5", "--run-at", "2030-01-01T09:00:00Z"], "not both"),
        (["k", "--delay", "-1"], "--delay"),
        (["k", "--max-attempts", "0"], "--max-attempts"),
        (["k", "--priority", "high"], "--priority"),
        ([], "give KIND, or --file"),
        (["k", "--bogus"], "No such option"),
    ],
)
def test_enqueue_bad_input_exits_2_with_one_line(
    db_url: str, conn: psycopg.Connection[Any], args: list[str], message: str
) -> None:
    result = cli(db_url, "enqueue", *args)
    assert result.exit_code == 2
    assert message in one_error_line(result)
    assert result.stdout == ""
    assert job_count(conn) == 0


# --- enqueue --file ----------------------------------------------------------------------


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_enqueue_file_of_12000_lines_uses_copy_and_enqueues_all(
    db_url: str,
    conn: psycopg.Connection[Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lines = [json.dumps({"kind": "bulk", "args": {"i": i}, "queue": "bulk"}) for i in range(12_000)]
    path = write_lines(tmp_path / "jobs.jsonl", lines)
    copied: list[int] = []
    real_copy = Broker._copy_enqueue

    def spy(self: Broker, batch: list[JobSpec], c: psycopg.Connection[Any]) -> Any:
        copied.append(len(batch))
        return real_copy(self, batch, c)

    monkeypatch.setattr(Broker, "_copy_enqueue", spy)
    result = cli(db_url, "enqueue", "--file", str(path), "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["jobs"] == summary["created"] == 12_000
    assert summary["batches"] == 3 and summary["existing"] == 0
    assert copied == [5000, 5000, 2000]
    rows = conn.execute(
        "SELECT count(*), count(DISTINCT (args->>'i')), min(id), max(id) FROM broker.jobs"
        " WHERE kind = 'bulk' AND queue = 'bulk' AND state = 'queued'"
    ).fetchone()
    assert rows == (12_000, 12_000, summary["first_id"], summary["last_id"])
    events = conn.execute("SELECT count(*) FROM broker.job_events WHERE event = 'enqueued'")
    assert events.fetchone() == (12_000,)


def test_enqueue_file_with_a_bad_line_enqueues_nothing(
    db_url: str, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    good = [json.dumps({"kind": "bulk", "args": {"i": i}}) for i in range(7000)]
    path = write_lines(tmp_path / "jobs.jsonl", [*good, '{"kind": "x", "priority": "high"}'])
    result = cli(db_url, "enqueue", "--file", str(path))
    assert result.exit_code == 2
    line = one_error_line(result)
    assert line.startswith(f"error: {path} line 7001: ")
    assert line.endswith("priority: Expected `int`, got `str`; nothing was enqueued")
    assert job_count(conn) == 0  # the first batch of 5,000 was rolled back too


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("{not json", "not valid JSON"),
        ('{"args": {}}', "missing required field `kind`"),
        ('{"kind": "k", "colour": "red"}', "unknown field `colour`"),
        ('{"kind": "k", "delay": 1, "run_at": "2030-01-01T00:00:00Z"}', "not both"),
        ('{"kind": "k", "run_at": "2030-01-01T00:00:00"}', "timezone"),
        ("[1]", "Expected `object`"),
    ],
)
def test_enqueue_file_says_which_line_and_why(
    db_url: str, conn: psycopg.Connection[Any], tmp_path: Path, bad: str, why: str
) -> None:
    path = write_lines(tmp_path / "jobs.jsonl", ['{"kind": "ok"}', "", bad])
    result = cli(db_url, "enqueue", "--file", str(path))
    assert result.exit_code == 2
    line = one_error_line(result)
    assert f"{path} line 3: " in line and why in line
    assert job_count(conn) == 0


def test_enqueue_file_a_batch_the_database_refuses_enqueues_nothing(
    db_url: str, broker: Broker, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    broker.enqueue("a", idempotency_key="taken")
    lines = ['{"kind": "b"}', '{"kind": "b", "idempotency_key": "taken"}']
    path = write_lines(tmp_path / "jobs.jsonl", lines)
    result = cli(db_url, "enqueue", "--file", str(path), "--batch-size", "1")
    assert result.exit_code == 1
    line = one_error_line(result)
    assert f"{path} lines 2-2: idempotency key 'taken'" in line
    assert job_count(conn) == 1


def test_enqueue_file_from_stdin(db_url: str, broker: Broker) -> None:
    text = '{"kind": "a", "tags": ["x"]}\n\n{"kind": "b", "queue": "q2", "priority": 3}\n'
    result = cli(db_url, "enqueue", "--file", "-", input=text)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "enqueued 2 jobs from stdin in 1 batch(es)\n"
    assert result.stderr == ""  # no progress bar when stderr is not a terminal
    kinds = {(j.kind, j.queue, j.priority) for j in (broker.get_job(i) for i in (1, 2))}
    assert kinds == {("a", "default", 0), ("b", "q2", 3)}


def test_enqueue_file_refuses_per_job_options(db_url: str, tmp_path: Path) -> None:
    path = write_lines(tmp_path / "jobs.jsonl", ['{"kind": "a"}'])
    result = cli(db_url, "enqueue", "--file", str(path), "--queue", "other")
    assert result.exit_code == 2
    assert "not --queue" in one_error_line(result)
    missing = cli(db_url, "enqueue", "--file", str(tmp_path / "nope.jsonl"))
    assert missing.exit_code == 2
    assert "does not exist" in one_error_line(missing)


# --- jobs ---------------------------------------------------------------------------------


def test_jobs_ls_table_filters_and_paging(db_url: str, broker: Broker) -> None:
    ids = [broker.enqueue("k", {"i": i}, queue="q1", tags=["t"]).id for i in range(3)]
    other = broker.enqueue("other", queue="q2").id
    broker.cancel(ids[0])

    table = cli(db_url, "jobs", "ls")
    assert table.exit_code == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:4] == ["ID", "QUEUE", "KIND", "STATE"]
    assert [int(line.split()[0]) for line in lines[1:]] == [other, *reversed(ids)]

    assert cli(db_url, "jobs", "ls", "--queue", "q2").stdout.count("\n") == 2
    cancelled = cli(db_url, "jobs", "ls", "--state", "cancelled", "--json")
    assert [j["id"] for j in json.loads(cancelled.stdout)["jobs"]] == [ids[0]]
    by_kind_tag = cli(db_url, "jobs", "ls", "--kind", "k", "--tag", "t", "--json")
    assert len(json.loads(by_kind_tag.stdout)["jobs"]) == 3

    page = cli(db_url, "jobs", "ls", "--limit", "2", "--json")
    body = json.loads(page.stdout)
    assert set(body) == {"jobs", "next_before"}
    assert [j["id"] for j in body["jobs"]] == [other, ids[2]]
    assert body["next_before"] == ids[2]
    assert set(body["jobs"][0]) == JOB_KEYS
    rest = json.loads(cli(db_url, "jobs", "ls", "--before", str(ids[2]), "--json").stdout)
    assert [j["id"] for j in rest["jobs"]] == [ids[1], ids[0]] and rest["next_before"] is None

    human = cli(db_url, "jobs", "ls", "--limit", "2")
    assert human.stderr == f"more: broker jobs ls --before {ids[2]}\n"
    assert cli(db_url, "jobs", "ls", "--queue", "none").stdout == "no jobs\n"


def test_jobs_ls_limit_beyond_one_page(db_url: str, broker: Broker) -> None:
    broker.enqueue_many([JobSpec("k", {"i": i}) for i in range(520)])
    body = json.loads(cli(db_url, "jobs", "ls", "--limit", "510", "--json").stdout)
    got = [j["id"] for j in body["jobs"]]
    assert len(got) == 510 and got == sorted(got, reverse=True) and len(set(got)) == 510
    assert body["next_before"] == got[-1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--state", "bogus"], "'bogus' is not one of"),
        (["--limit", "-1"], "--limit"),
        (["--limit", "0"], "--limit"),
        (["--before", "x"], "--before"),
    ],
)
def test_jobs_ls_bad_input_exits_2(db_url: str, args: list[str], message: str) -> None:
    result = cli(db_url, "jobs", "ls", *args)
    assert result.exit_code == 2
    assert message in one_error_line(result)


def test_jobs_show_with_events_and_logs(db_url: str, broker: Broker) -> None:
    job_id = broker.enqueue("k", {"n": 1}, tags=["x"]).id
    [held] = broker.claim(["default"], 1, "host:1")
    broker.append_logs([(held, "hello from the handler")])
    broker.complete(held, {"ok": True})

    shown = cli(db_url, "jobs", "show", str(job_id), "--logs")
    assert shown.exit_code == 0, shown.stderr
    out = shown.stdout
    assert "state             succeeded" in out
    assert '{"ok":true}' in out
    for event in ("enqueued", "claimed", "succeeded"):
        assert event in out
    assert "hello from the handler" in out
    assert "hello" not in cli(db_url, "jobs", "show", str(job_id)).stdout

    body = json.loads(cli(db_url, "jobs", "show", str(job_id), "--logs", "--json").stdout)
    assert set(body) == {"job", "events", "logs"}
    assert set(body["job"]) == JOB_KEYS
    assert body["job"]["state"] == "succeeded" and body["job"]["result"] == {"ok": True}
    assert [e["event"] for e in body["events"]] == ["enqueued", "claimed", "succeeded"]
    assert set(body["events"][0]) == {"id", "job_id", "event", "epoch", "worker_id", "at", "detail"}
    assert [line["line"] for line in body["logs"]] == ["hello from the handler"]
    assert body["job"]["created_at"].endswith("Z") or "+00:00" in body["job"]["created_at"]
    no_logs = json.loads(cli(db_url, "jobs", "show", str(job_id), "--json").stdout)
    assert no_logs["logs"] is None


def test_jobs_show_unknown_id_exits_1(db_url: str) -> None:
    result = cli(db_url, "jobs", "show", "424242")
    assert result.exit_code == 1
    assert one_error_line(result) == "error: job 424242 not found"
    bad = cli(db_url, "jobs", "show", "abc")
    assert bad.exit_code == 2
    one_error_line(bad)


def test_jobs_cancel_and_retry(db_url: str, broker: Broker) -> None:
    queued = broker.enqueue("k").id
    result = cli(db_url, "jobs", "cancel", str(queued))
    assert (result.exit_code, result.stdout) == (0, f"job {queued}: cancelled\n")
    again = cli(db_url, "jobs", "cancel", str(queued))
    assert again.exit_code == 1
    assert one_error_line(again) == f"error: cannot cancel job {queued}: it is cancelled"

    retried = cli(db_url, "jobs", "retry", str(queued), "--json")
    assert json.loads(retried.stdout) == {"id": queued, "state": "queued"}
    assert broker.get_job(queued).state == "queued"
    not_failed = cli(db_url, "jobs", "retry", str(queued))
    assert not_failed.exit_code == 1
    assert one_error_line(not_failed) == f"error: cannot retry job {queued}: it is queued"

    [held] = broker.claim(["default"], 1, "host:1")
    running = cli(db_url, "jobs", "cancel", str(held.job_id), "--json")
    assert json.loads(running.stdout) == {"id": held.job_id, "state": "running"}
    assert broker.get_job(held.job_id).cancel_requested_at is not None


def test_jobs_cancel_a_finished_job_exits_1(db_url: str, broker: Broker) -> None:
    job_id = broker.enqueue("k").id
    [held] = broker.claim(["default"], 1, "host:1")
    broker.complete(held)
    result = cli(db_url, "jobs", "cancel", str(job_id))
    assert result.exit_code == 1
    assert one_error_line(result) == f"error: cannot cancel job {job_id}: it is succeeded"
    assert broker.get_job(job_id).state == "succeeded"
    missing = cli(db_url, "jobs", "cancel", "999999")
    assert (missing.exit_code, one_error_line(missing)) == (1, "error: job 999999 not found")
    unknown = cli(db_url, "jobs", "frobnicate")
    assert unknown.exit_code == 2
    assert "No such command" in one_error_line(unknown)


# --- stats and workers ------------------------------------------------------------------


def test_stats_table_and_json(db_url: str, broker: Broker, conn: psycopg.Connection[Any]) -> None:
    broker.enqueue("k", queue="a")
    broker.enqueue("k", queue="a", delay=3600)
    done = broker.enqueue("k", queue="b").id
    [held] = broker.claim(["b"], 1, "host:1")
    assert held.job_id == done
    broker.complete(held)
    conn.execute("SELECT broker.pause_queue('a', 'deploy')")
    conn.execute("SELECT broker.pause_queue('idle')")  # paused, and no jobs at all

    table = cli(db_url, "stats")
    assert table.exit_code == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == [
        "QUEUE",
        "WAITING",
        "QUEUED",
        "AVAILABLE",
        "SCHEDULED",
        "RUNNING",
        "SUCCEEDED",
        "FAILED",
        "CANCELLED",
        "OLDEST",
        "WAIT",
        "PAUSED",
    ]
    assert lines[1].split()[:9] == ["a", "0", "2", "1", "1", "0", "0", "0", "0"]
    assert lines[1].split()[-1] == "paused"
    assert lines[2].split() == ["b", "0", "0", "0", "0", "0", "1", "0", "0", "-"]
    assert lines[3].split() == ["idle", "0", "0", "0", "0", "0", "0", "0", "0", "-", "paused"]
    assert lines[4].split()[:9] == ["(all)", "0", "2", "1", "1", "0", "1", "0", "0"]
    assert "workers alive: 0" in table.stdout
    assert "queue 'a': 2 queued, and no live worker serves it" in table.stdout

    body = json.loads(cli(db_url, "stats", "--json").stdout)
    assert set(body) == {"queues", "totals", "workers_alive", "db_time"}
    assert [q["queue"] for q in body["queues"]] == ["a", "b", "idle"]
    a = body["queues"][0]
    assert a == {
        "queue": "a",
        "waiting": 0,
        "queued": 2,
        "available": 1,
        "scheduled": 1,
        "running": 0,
        "succeeded": 0,
        "failed": 0,
        "cancelled": 0,
        "oldest_available_age_seconds": a["oldest_available_age_seconds"],
        "paused": True,
        "paused_at": a["paused_at"],
        "pause_reason": "deploy",
        "concurrency_limit": None,
        "rate_limit": None,
        "rate_period_seconds": None,
        "served": False,
    }
    assert a["oldest_available_age_seconds"] >= 0 and a["paused_at"] is not None
    assert body["queues"][1]["paused"] is False and body["queues"][1]["paused_at"] is None
    assert body["totals"] == {
        "waiting": 0,
        "queued": 2,
        "available": 1,
        "scheduled": 1,
        "running": 0,
        "succeeded": 1,
        "failed": 0,
        "cancelled": 0,
        "oldest_available_age_seconds": a["oldest_available_age_seconds"],
    }


def register_worker(conn: psycopg.Connection[Any], seq: int, age: str, skew: float) -> str:
    host = uuid.uuid4()
    worker_id = f"{host}:{seq}"
    conn.execute(
        "INSERT INTO broker.workers (worker_id, host_id, seq, hostname, pid, queues,"
        " concurrency, clock_skew_seconds, last_seen) VALUES"
        " (%s, %s, %s, 'box', 123, ARRAY['default', 'emails'], 4, %s, now() - %s::interval)",
        (worker_id, host, seq, skew, age),
    )
    return worker_id


def test_workers_table_and_json(db_url: str, conn: psycopg.Connection[Any]) -> None:
    assert cli(db_url, "workers").stdout == "no workers\n"
    alive = register_worker(conn, 1, "1 second", 0.004)
    gone = register_worker(conn, 2, "10 minutes", 9.5)
    stopped = register_worker(conn, 3, "5 minutes", 0.0)
    conn.execute("UPDATE broker.workers SET stopped_at = now() WHERE worker_id = %s", (stopped,))

    table = cli(db_url, "workers")
    assert table.exit_code == 0, table.stderr
    rows = {line.split()[0]: line.split() for line in table.stdout.splitlines()[1:]}
    assert rows[alive][6] == "alive" and rows[alive][-1] == "+0.004s"
    assert rows[gone][6] == "gone" and rows[gone][-1] == "+9.500s!"
    assert rows[gone][7:9] == ["10m00s", "ago"]
    assert rows[stopped][6] == "stopped"

    body = json.loads(cli(db_url, "workers", "--json").stdout)
    assert set(body) == {"workers", "clock_skew_tolerance_seconds"}
    by_id = {w["worker_id"]: w for w in body["workers"]}
    assert by_id[alive]["alive"] is True and by_id[alive]["status"] == "alive"
    assert by_id[gone]["alive"] is False and by_id[gone]["clock_skew_exceeded"] is True
    assert (by_id[gone]["status"], by_id[stopped]["status"]) == ("gone", "stopped")
    assert by_id[stopped]["stopped_at"] is not None
    assert by_id[alive]["queues"] == ["default", "emails"]
    only = json.loads(cli(db_url, "workers", "--alive", "--json").stdout)
    assert [w["worker_id"] for w in only["workers"]] == [alive]


def test_jobs_alone_shows_its_help(db_url: str) -> None:
    result = cli(db_url, "jobs")
    assert "Usage: broker jobs" in result.output
    assert "error:" not in result.output
    for command in ("ls", "show", "cancel", "retry"):
        assert command in result.output


def test_help_documents_the_exit_codes(db_url: str) -> None:
    result = cli(db_url, "--help")
    assert "Exit codes" in result.stdout
    for command in ("enqueue", "jobs", "stats", "workers"):
        assert command in result.stdout


# --- a real process -----------------------------------------------------------------------


def broker_process(
    db_url: str, *args: str, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env["BROKER_DATABASE_URL"] = db_url
    return subprocess.run(
        [sys.executable, "-m", "broker.cli", *args],
        env=env,
        input=input,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_exit_codes_and_stderr_of_a_real_process(db_url: str) -> None:
    fed = broker_process(db_url, "enqueue", "--file", "-", input='{"kind": "a"}\n{"kind": "b"}\n')
    assert (fed.returncode, fed.stderr) == (0, "")
    ok = broker_process(db_url, "enqueue", "k", "--args", '{"x": 1}')
    # One line on stderr: no worker runs here, so nobody serves the job's queue.
    assert ok.returncode == 0 and ok.stderr == "warning: no live worker serves queue 'default'\n"
    job_id = int(ok.stdout)
    shown = broker_process(db_url, "jobs", "show", str(job_id), "--json")
    assert json.loads(shown.stdout)["job"]["args"] == {"x": 1}

    missing = broker_process(db_url, "jobs", "show", "987654")
    assert (missing.returncode, missing.stdout) == (1, "")
    assert missing.stderr == "error: job 987654 not found\n"

    bad_json = broker_process(db_url, "enqueue", "k", "--args", "{nope")
    assert bad_json.returncode == 2
    assert bad_json.stderr.startswith("error: --args is not valid JSON")
    assert bad_json.stderr.count("\n") == 1

    bad_line = broker_process(db_url, "enqueue", "--file", "-", input='{"kind": "c"}\n{oops\n')
    assert bad_line.returncode == 2
    assert bad_line.stderr.startswith("error: stdin line 2: not valid JSON")
    ls = broker_process(db_url, "jobs", "ls", "--json")
    assert len(json.loads(ls.stdout)["jobs"]) == 3  # a, b and k; nothing from the bad file

    unreachable = broker_process("postgresql://nobody@127.0.0.1:1/none", "stats")
    assert unreachable.returncode == 1
    assert unreachable.stderr.startswith("error: cannot connect to PostgreSQL at 127.0.0.1:1")
    assert unreachable.stderr.count("\n") == 1


# --- dependencies and groups -----------------------------------------------------------


def test_enqueue_dependencies_group_and_deadline_options(db_url: str, broker: Broker) -> None:
    parent = broker.enqueue("p").id
    done = cli(
        db_url,
        "enqueue",
        "child",
        "--depends-on",
        f"{parent},{parent}",
        "--group",
        "nightly",
        "--concurrency-key",
        "tenant-7",
        "--start-within",
        "90",
    )
    assert done.exit_code == 0, done.stderr
    job = broker.get_job(int(done.stdout))
    assert (job.state, job.depends_on, job.group, job.concurrency_key) == (
        "waiting",
        [parent],
        "nightly",
        "tenant-7",
    )
    assert job.deadline is not None and (job.deadline - job.created_at).total_seconds() == 90
    shown = cli(db_url, "jobs", "show", str(job.id))
    assert "depends on        " + str(parent) in shown.stdout
    assert "group             nightly" in shown.stdout
    missing = cli(db_url, "enqueue", "child", "--depends-on", "424242")
    assert missing.exit_code == 2
    assert "depends_on names job 424242, which does not exist" in one_error_line(missing)
    both = cli(db_url, "enqueue", "k", "--deadline", "2030-01-01T00:00:00Z", "--start-within", "5")
    assert both.exit_code == 2
    assert one_error_line(both) == "error: give --deadline or --start-within, not both"


def test_groups_show_counts_per_state(db_url: str, broker: Broker) -> None:
    first = broker.enqueue("k", group="batch-1").id
    broker.enqueue("k", group="batch-1", depends_on=[first])
    broker.enqueue("k", group="other")
    broker.cancel(first)  # its dependent is cancelled with it
    shown = cli(db_url, "groups", "show", "batch-1")
    assert shown.exit_code == 0, shown.stderr
    rows = dict(line.split() for line in shown.stdout.splitlines()[1:])
    assert rows == {
        "waiting": "0",
        "queued": "0",
        "running": "0",
        "succeeded": "0",
        "failed": "0",
        "cancelled": "2",
        "(all)": "2",
    }
    body = json.loads(cli(db_url, "groups", "show", "batch-1", "--json").stdout)
    assert body["total"] == 2 and body["counts"]["cancelled"] == 2
    bad = cli(db_url, "groups", "show", "two words")
    assert bad.exit_code == 2 and "group must be" in one_error_line(bad)
