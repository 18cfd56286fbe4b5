"""The worker's metrics hooks without a process or a database: which outcome label a
written row counts under, and registries that never share a series."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from broker import lease
from broker.lease import Failure, Finish
from broker.types import JobState, Lease, WriteOutcome
from broker.worker.metrics import Metrics, PrometheusMetrics, outcome_of

HELD = Lease(7, 3, "q", "mail", {}, 0, 1, 5, None, "w:1")


def wrote(state: JobState | None, applied: bool = True) -> WriteOutcome:
    return WriteOutcome(HELD.job_id, HELD.epoch, applied, state)


@pytest.mark.parametrize(
    ("row", "state", "expected"),
    [
        (lease.completed(HELD), "succeeded", "succeeded"),
        (lease.failed(HELD, Failure("x")), "queued", "retried"),
        # A retryable failure on the job's last attempt: the database fails it.
        (lease.failed(HELD, Failure("x")), "failed", "failed"),
        # A failure while a cancel was requested ends cancelled.
        (lease.failed(HELD, Failure("x")), "cancelled", "cancelled"),
        (lease.snoozed(HELD, 1.0), "queued", "snoozed"),
        (lease.snoozed(HELD, 1.0), "failed", "failed"),  # past max_snoozes
        (lease.cancel_acked(HELD, "stop"), "cancelled", "cancelled"),
        (lease.released(HELD), "queued", "released"),
        (lease.released(HELD), None, "released"),
    ],
)
def test_the_new_state_decides_the_outcome(
    row: Finish, state: JobState | None, expected: str
) -> None:
    assert outcome_of(row, wrote(state)) == expected


def test_a_refused_write_is_lost_and_counted_as_stale() -> None:
    metrics = PrometheusMetrics(CollectorRegistry(), kinds=("mail",))
    metrics.written(lease.completed(HELD), wrote(None, applied=False))
    metrics.written(lease.failed(HELD, Failure("x")), wrote("queued"))
    found = scrape(metrics.registry)
    assert found[("broker_worker_jobs_total", (("kind", "mail"), ("outcome", "lost")))] == 1
    assert found[("broker_worker_jobs_total", (("kind", "mail"), ("outcome", "retried")))] == 1
    assert found[("broker_worker_jobs_total", (("kind", "mail"), ("outcome", "failed")))] == 0
    assert found[("broker_worker_stale_writes_total", (("write", "complete"),))] == 1
    assert found[("broker_worker_stale_writes_total", (("write", "fail"),))] == 0


def test_registries_are_separate_and_the_base_records_nothing() -> None:
    first, second = PrometheusMetrics(None), PrometheusMetrics(None)
    first.lease_lost()
    first.ran(HELD, 0.2, None)
    found = scrape(first.registry)
    assert found[("broker_worker_leases_lost_total", ())] == 1
    assert found[("broker_worker_jobs_total", (("kind", "mail"), ("outcome", "lost")))] == 1
    assert found[("broker_worker_job_run_seconds_count", (("kind", "mail"),))] == 1
    assert scrape(second.registry)[("broker_worker_leases_lost_total", ())] == 0
    quiet = Metrics()
    quiet.lease_lost()
    quiet.ran(HELD, 0.2, None)
    assert not hasattr(quiet, "registry")


def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
