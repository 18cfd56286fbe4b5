"""Bad data never fails a neighbour: a row the worker cannot decode, a result or an error
the database cannot store each fail only their own job, in a claim batch full of good ones."""

from __future__ import annotations

from pathlib import Path

from worker_harness import WorkerProcess, create_runs_table, query, scalar, wait_for

from broker import Broker, JobSpec

CONCURRENCY = 10
# Deeper than Python's decoder can go (recursion limit 1000), shallower than PostgreSQL's
# jsonb parser refuses.
POISON_DEPTH = 2000


def _finished(url: str, ids: list[int]) -> bool:
    done = scalar(
        url,
        "SELECT count(*) FROM broker.jobs WHERE id = ANY(%s)"
        " AND state IN ('succeeded', 'failed', 'cancelled')",
        [ids],
    )
    return bool(done == len(ids))


def test_a_row_the_worker_cannot_decode_fails_only_its_own_job(
    db_url: str, broker: Broker, tmp_path: Path
) -> None:
    create_runs_table(db_url)
    # Straight into broker.jobs: the enqueue doors refuse args nested deeper than 64, and
    # the table has no depth constraint (docs/decisions/008-job-contract.md), so a
    # hand-written INSERT is how such a row gets in.
    deep = '{"deep": ' + "[" * POISON_DEPTH + "]" * POISON_DEPTH + "}"
    [(poison,)] = query(
        db_url,
        "INSERT INTO broker.jobs (kind, args, max_attempts) VALUES ('record', %s::jsonb, 1)"
        " RETURNING id",
        [deep],
    )
    good = [
        e.id
        for e in broker.enqueue_many(
            [JobSpec("record", {"work": 0.01 * n}, max_attempts=1) for n in range(CONCURRENCY - 1)]
        )
    ]
    every = [poison, *good]
    with WorkerProcess(db_url, tmp_path, ["--concurrency", str(CONCURRENCY)]) as worker:
        wait_for(lambda: _finished(db_url, every), 60, "all ten jobs", diagnose=worker.output)
        assert worker.stop() == 0
        output = worker.output()
    # One claim took them all: the poison row was a neighbour of every good job.
    claims = query(
        db_url,
        "SELECT count(DISTINCT at), count(*) FROM broker.job_events"
        " WHERE event = 'claimed' AND job_id = ANY(%s)",
        [every],
    )
    assert claims == [(1, CONCURRENCY)]
    states = dict(query(db_url, "SELECT id, state FROM broker.jobs WHERE id = ANY(%s)", [every]))
    assert {states[j] for j in good} == {"succeeded"}
    runs = query(db_url, "SELECT job_id, count(*) FROM test_runs GROUP BY job_id")
    assert sorted(runs) == sorted((j, 1) for j in good), "every good handler ran once"

    bad = broker.get_job(poison)
    assert (bad.state, bad.attempts) == ("failed", 1)
    assert bad.last_error is not None and bad.last_error.startswith("args cannot be decoded")
    assert "not retried" in bad.last_error
    events = broker.events(poison)
    assert [e.event for e in events] == ["claimed", "failed"]
    assert events[-1].detail is not None and events[-1].detail["error"] == bad.last_error
    # Listings still show the job: its args read as a one-key object saying why.
    assert set(bad.args) == {"unreadable"}
    assert "Traceback" not in output and "RecursionError" not in output


def test_results_errors_and_log_lines_the_database_cannot_store(
    db_url: str, broker: Broker, tmp_path: Path
) -> None:
    create_runs_table(db_url)
    specs = [JobSpec("unstorable_result"), JobSpec("unstorable_error")]
    specs += [JobSpec("record", {"work": 0.01 * n}, max_attempts=1) for n in range(CONCURRENCY - 2)]
    ids = [e.id for e in broker.enqueue_many(specs)]
    with WorkerProcess(db_url, tmp_path, ["--concurrency", str(CONCURRENCY)]) as worker:
        wait_for(lambda: _finished(db_url, ids), 60, "all ten jobs", diagnose=worker.output)
        assert worker.stop() == 0
    result_job, error_job, *good = (broker.get_job(i) for i in ids)
    assert {j.state for j in good} == {"succeeded"}
    assert (result_job.state, result_job.last_error) == (
        "failed",
        "result must not contain NUL (\\u0000)",
    )
    assert error_job.state == "failed" and error_job.last_error is not None
    assert "bad \\x00 text \\ud800" in error_job.last_error
    assert [line.line for line in broker.logs(error_job.id)] == ["log \\x00 line \\udc80"]
