"""Dependencies with real worker processes: fan-out, fan-in, and a failure that cancels the
jobs waiting for it. Each run is recorded by the handler (tests/acceptance/tasks_fixture.py
`record`), so the test sees when every job started and finished."""

from __future__ import annotations

from pathlib import Path

import pytest
from worker_harness import WorkerProcess, create_runs_table, query, states, wait_for

from broker import Broker, JobSpec


@pytest.fixture
def runs(db_url: str) -> str:
    create_runs_table(db_url)
    return db_url


def spans(url: str) -> dict[int, tuple[float, float]]:
    """job id -> (started, finished) of its run, as epoch seconds of the worker host."""
    rows = query(
        url,
        "SELECT job_id, extract(epoch FROM started), extract(epoch FROM finished)"
        " FROM public.test_runs WHERE outcome = 'done'",
    )
    return {int(r[0]): (float(r[1]), float(r[2])) for r in rows}


def test_fan_out_and_fan_in_across_two_workers(runs: str, broker: Broker, tmp_path: Path) -> None:
    root = broker.enqueue("record", {"work": 0.3}).id
    fan = [
        e.id
        for e in broker.enqueue_many(
            [JobSpec("record", {"work": 0.2}, depends_on=[root], group="fan") for _ in range(8)]
        )
    ]
    join = broker.enqueue("record", depends_on=fan, group="fan").id
    assert broker.get_job(join).state == "waiting"
    with (
        WorkerProcess(runs, tmp_path / "a", ["--concurrency", "4"]) as one,
        WorkerProcess(runs, tmp_path / "b", ["--concurrency", "4"]) as two,
    ):
        wait_for(
            lambda: states(runs).get("succeeded") == 10,
            60,
            "every job to succeed",
            diagnose=lambda: one.output() + two.output(),
        )
        assert one.stop() == 0 and two.stop() == 0
    ran = spans(runs)
    assert set(ran) == {root, *fan, join}
    for child in fan:
        assert ran[child][0] >= ran[root][1], "a dependent started before its dependency ended"
    assert ran[join][0] >= max(ran[child][1] for child in fan)
    # The fan ran in parallel across the workers: its runs overlap.
    starts = sorted(ran[c][0] for c in fan)
    assert starts[-1] < min(ran[c][1] for c in fan)


def test_a_failure_cancels_the_jobs_waiting_for_it(
    runs: str, broker: Broker, tmp_path: Path
) -> None:
    bad = broker.enqueue("boom").id
    good = broker.enqueue("record").id
    child = broker.enqueue("record", depends_on=[good, bad]).id
    grandchild = broker.enqueue("record", depends_on=[child]).id
    with WorkerProcess(runs, tmp_path) as worker:
        wait_for(
            lambda: (
                broker.get_job(grandchild).state == "cancelled"
                and broker.get_job(good).state == "succeeded"
            ),
            30,
            "the dependents to be cancelled",
            diagnose=worker.output,
        )
        assert worker.stop() == 0
    assert set(spans(runs)) == {good}  # neither dependent ever ran
    assert broker.get_job(child).last_error == f"dependency {bad} failed"
    assert [e.event for e in broker.events(grandchild)] == ["enqueued", "dependency_failed"]
