"""A Hypothesis stateful test of the lease state machine against a real database.

Random interleavings of enqueue (with and without dependencies), claim, heartbeat,
complete, fail, snooze, cancel, reap, deadlines passing (and the reaper expiring those
jobs) and a jumping database clock, with writes made both under the current lease and
under stale ones (older epochs) the model remembers. The model predicts every job's state,
attempts, snoozes and epoch; after each step the database must agree and the invariants
hold:

- at most one live lease per job: a running job's epoch is its latest (and count of)
  `claimed` events;
- terminal states are only ever written under the epoch current at the time;
- every stale write raises LeaseLost and is recorded as `stale_write_rejected`;
- attempts never exceed max_attempts, and the state is one of the six;
- a job waits exactly while a dependency is unfinished and none failed or was cancelled:
  the model resolves dependents to a fixpoint after every step, the database in the
  trigger of the statement that ended the dependency.

At the end workers stop failing: claiming and completing (with time moving on and the
reaper running) must drive every job to a terminal state within a bounded number of rounds.

Hypothesis needs each run to be reproducible, so no outcome may depend on how much wall
time passes. Every duration here (lease ttls, clock jumps, backoff) is a multiple of
TICK, far longer than a whole run takes, and the test database's retry_backoff(), which
operators may replace, is swapped for a jitter-free curve in the same unit. Jitter and
backoff growth are tested on the real function elsewhere.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar

import psycopg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from broker import Broker, InvalidTransition, JobNotFound, Lease, LeaseLost
from broker.lease import expire, snoozed
from broker.schema import JOB_STATES, TERMINAL_STATES
from tests.dbtime import advance_db_time

Conn = psycopg.Connection[tuple[Any, ...]]

WORKERS = ("host-a:1", "host-a:2", "host-b:1")
QUEUES = ("q1", "q2")
MAX_ATTEMPTS = 4
TICK = 100.0
TTLS = (2 * TICK, 6 * TICK)
CLOCK_JUMPS = (TICK, 3 * TICK)
# Backoff after attempt n is n ticks, so at most MAX_ATTEMPTS ticks.
BACKOFF_SQL = (
    "CREATE OR REPLACE FUNCTION broker.retry_backoff(attempt integer) RETURNS interval"
    f" LANGUAGE sql AS $$ SELECT make_interval(secs => {TICK} * attempt) $$"
)
FINAL_ROUNDS = 12
MAX_SNOOZES = 2


@dataclass
class ModelJob:
    """What the model believes about one job."""

    queue: str
    max_attempts: int
    state: str = "queued"
    attempts: int = 0
    epoch: int = 0
    cancel_requested: bool = False
    depends_on: tuple[int, ...] = ()
    snoozes: int = 0
    past_deadline: bool = False


class LeaseMachine(RuleBasedStateMachine):
    """Drives one database through random transitions; see the module docstring."""

    broker: ClassVar[Broker]
    conn: ClassVar[Conn]

    def __init__(self) -> None:
        super().__init__()
        self.jobs: dict[int, ModelJob] = {}
        self.leases: list[Lease] = []  # every lease ever granted, live or stale
        self.stale_writes: Counter[str] = Counter()

    @initialize(
        queues=st.lists(st.sampled_from(QUEUES), min_size=1, max_size=3),
        max_attempts=st.integers(1, MAX_ATTEMPTS),
    )
    def start(self, queues: list[str], max_attempts: int) -> None:
        """An empty database with a few jobs, so that runs start with work to lease."""
        self.conn.execute(
            "TRUNCATE broker.jobs, broker.job_events, broker.job_logs RESTART IDENTITY"
        )
        for queue in queues:
            self.enqueue(queue, 0, max_attempts, 1)

    # --- helpers ---------------------------------------------------------------------

    def is_current(self, lease: Lease) -> bool:
        job = self.jobs[lease.job_id]
        return job.state == "running" and job.epoch == lease.epoch

    def current_leases(self) -> list[Lease]:
        return [lease for lease in self.leases if self.is_current(lease)]

    def stale_leases(self) -> list[Lease]:
        return [lease for lease in self.leases if not self.is_current(lease)]

    def expect_stale(self, write: str, lease: Lease) -> None:
        """Count a rejected write; the invariant matches the count against the events."""
        self.stale_writes[write] += 1
        row = self.conn.execute(
            "SELECT epoch, detail->>'write' FROM broker.job_events"
            " WHERE job_id = %s AND event = 'stale_write_rejected' ORDER BY id DESC LIMIT 1",
            (lease.job_id,),
        ).fetchone()
        assert row == (lease.epoch, write)

    def dependency_state(self, depends_on: tuple[int, ...]) -> str | None:
        """Where a job with these dependencies belongs now (None: it has none)."""
        if not depends_on:
            return None
        ended = [self.jobs[d].state for d in depends_on]
        if any(s in ("failed", "cancelled") for s in ended):
            return "cancelled"
        return "queued" if all(s == "succeeded" for s in ended) else "waiting"

    def resolve(self) -> None:
        """Release or cancel waiting jobs, to a fixpoint (cancels cascade)."""
        changed = True
        while changed:
            changed = False
            for job in self.jobs.values():
                if job.state == "waiting":
                    now = self.dependency_state(job.depends_on)
                    if now != "waiting":
                        job.state = str(now)
                        changed = True

    def after_fail(self, job: ModelJob, retryable: bool) -> str:
        if job.cancel_requested:
            return "cancelled"
        if not retryable or job.attempts >= job.max_attempts:
            return "failed"
        return "queued"

    # --- submitters and operators ------------------------------------------------------

    @rule(
        queue=st.sampled_from(QUEUES),
        priority=st.integers(-2, 2),
        max_attempts=st.integers(1, MAX_ATTEMPTS),
        count=st.integers(1, 2),
    )
    def enqueue(self, queue: str, priority: int, max_attempts: int, count: int) -> None:
        for _ in range(count):
            job = self.broker.enqueue(
                "work", queue=queue, priority=priority, max_attempts=max_attempts
            )
            assert job.created and job.id not in self.jobs
            self.jobs[job.id] = ModelJob(queue, max_attempts)

    @precondition(lambda self: bool(self.jobs))
    @rule(data=st.data(), queue=st.sampled_from(QUEUES))
    def enqueue_dependent(self, data: st.DataObject, queue: str) -> None:
        """A job that depends on one to three known jobs, whatever their state."""
        depends_on = tuple(
            sorted(
                data.draw(
                    st.sets(st.sampled_from(sorted(self.jobs)), min_size=1, max_size=3),
                    label="depends_on",
                )
            )
        )
        expected = self.dependency_state(depends_on)
        job = self.broker.enqueue("work", queue=queue, depends_on=depends_on)
        assert job.created and job.id not in self.jobs
        self.jobs[job.id] = ModelJob(queue, 20, str(expected), depends_on=depends_on)

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        """Cancel any job the model knows, or one that does not exist."""
        unknown = len(self.jobs) + 1000
        job_id = data.draw(st.sampled_from([*sorted(self.jobs), unknown]), label="job")
        if job_id == unknown:
            with pytest.raises(JobNotFound):
                self.broker.cancel(job_id)
            return
        job = self.jobs[job_id]
        if job.state in TERMINAL_STATES:
            with pytest.raises(InvalidTransition) as info:
                self.broker.cancel(job_id)
            assert info.value.state == job.state
            return
        new_state = self.broker.cancel(job_id)
        if job.state in ("queued", "waiting"):
            assert new_state == "cancelled"
            job.state = "cancelled"
            self.resolve()
        else:
            assert new_state == "running"
            job.cancel_requested = True

    @rule(seconds=st.sampled_from(CLOCK_JUMPS))
    def advance_time(self, seconds: float) -> None:
        advance_db_time(self.conn, seconds)

    @rule()
    def leases_run_out(self) -> None:
        """Every worker stalls past its lease, then a reaper runs."""
        advance_db_time(self.conn, max(TTLS) + TICK)
        self.reap()

    @rule()
    def reap(self) -> None:
        for reaped in self.broker.reap():
            job = self.jobs[reaped.job_id]
            assert job.state == "running", f"reaped job {reaped.job_id} the model has {job.state}"
            if job.cancel_requested:
                expected = "cancelled"
            elif job.attempts >= job.max_attempts:
                expected = "failed"
            else:
                expected = "queued"
            assert reaped.state == expected
            job.state = expected
        self.resolve()

    # --- workers -----------------------------------------------------------------------

    def claim(self, worker: str, queues: tuple[str, ...], limit: int, ttl: float) -> None:
        claimed = self.broker.claim(list(queues), limit, worker, ttl)
        assert len(claimed) <= limit
        assert len({lease.job_id for lease in claimed}) == len(claimed)
        for lease in claimed:
            job = self.jobs[lease.job_id]
            assert job.state == "queued", f"claimed job {lease.job_id} that is {job.state}"
            assert not job.past_deadline, f"claimed job {lease.job_id} past its deadline"
            assert lease.queue in queues and lease.queue == job.queue
            assert lease.epoch == job.epoch + 1
            assert lease.attempt == job.attempts + 1 <= job.max_attempts
            assert lease.worker_id == worker
            job.state, job.epoch, job.attempts = "running", lease.epoch, lease.attempt
            self.leases.append(lease)
        if len(claimed) < limit:
            # Nothing runnable may be left behind in the queues asked for.
            row = self.conn.execute(
                "SELECT count(*) FROM broker.jobs WHERE state = 'queued'"
                " AND queue = ANY(%s) AND run_at <= now()"
                " AND (deadline IS NULL OR deadline > now())",
                (list(queues),),
            ).fetchone()
            assert row == (0,)

    @rule(
        worker=st.sampled_from(WORKERS),
        queues=st.sampled_from([("q1",), ("q2",), QUEUES]),
        limit=st.integers(1, 3),
        ttl=st.sampled_from(TTLS),
    )
    def claim_some(self, worker: str, queues: tuple[str, ...], limit: int, ttl: float) -> None:
        self.claim(worker, queues, limit, ttl)

    @rule(worker=st.sampled_from(WORKERS), ttl=st.sampled_from(TTLS))
    def reap_and_claim(self, worker: str, ttl: float) -> None:
        """A worker's poll: run the reaper, then take what is runnable."""
        self.reap()
        self.claim(worker, QUEUES, 3, ttl)

    def pick_lease(self, data: st.DataObject) -> Lease:
        """The current lease of some job, or a stale one: preferably a zombie's, whose job
        is running again under a newer epoch (the case fencing exists for)."""
        current = self.current_leases()
        stale = self.stale_leases()
        zombies = [lease for lease in stale if self.jobs[lease.job_id].state == "running"]
        kinds = [k for k, ls in (("current", current), ("zombie", zombies), ("stale", stale)) if ls]
        kind = data.draw(st.sampled_from(kinds), label="kind")
        pool = {"current": current, "zombie": zombies, "stale": stale}[kind]
        return data.draw(st.sampled_from(pool), label=f"{kind} lease")

    @precondition(lambda self: bool(self.current_leases()))
    @rule(data=st.data(), worker=st.sampled_from(WORKERS))
    def worker_stalls(self, data: st.DataObject, worker: str) -> None:
        """A worker stalls past its lease; the reaper requeues the job (or ends it) and,
        if it went back to the queue, another worker claims it: the first is now a zombie."""
        stalled = data.draw(st.sampled_from(self.current_leases()), label="stalled")
        advance_db_time(self.conn, max(TTLS) + TICK)
        self.reap()
        if self.jobs[stalled.job_id].state == "queued":
            advance_db_time(self.conn, MAX_ATTEMPTS * TICK)  # past any backoff
            self.claim(worker, QUEUES, 3, min(TTLS))

    @precondition(lambda self: bool(self.leases))
    @rule(data=st.data(), ttl=st.sampled_from(TTLS))
    def heartbeat(self, data: st.DataObject, ttl: float) -> None:
        lease = self.pick_lease(data)
        outcome = self.broker.heartbeat([lease], ttl)
        if self.is_current(lease):
            assert (outcome.extended, outcome.lost) == ([lease], [])
            expected_cancel = [lease] if self.jobs[lease.job_id].cancel_requested else []
            assert outcome.cancel_requested == expected_cancel
        else:
            assert (outcome.extended, outcome.lost, outcome.cancel_requested) == ([], [lease], [])
            self.expect_stale("heartbeat", lease)

    @precondition(lambda self: bool(self.leases))
    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        lease = self.pick_lease(data)
        result = {"by": lease.worker_id, "epoch": lease.epoch}
        if self.is_current(lease):
            self.broker.complete(lease, result)
            self.jobs[lease.job_id].state = "succeeded"
            self.resolve()
            assert self.broker.get_job(lease.job_id).result == result
        else:
            before = self.broker.get_job(lease.job_id)
            with pytest.raises(LeaseLost) as info:
                self.broker.complete(lease, result)
            assert (info.value.job_id, info.value.epoch) == (lease.job_id, lease.epoch)
            after = self.broker.get_job(lease.job_id)
            assert (after.result, after.finished_at) == (before.result, before.finished_at)
            self.expect_stale("complete", lease)

    @precondition(lambda self: bool(self.leases))
    @rule(
        data=st.data(),
        retryable=st.booleans(),
        delay=st.sampled_from([None, 0.0]),
    )
    def fail(self, data: st.DataObject, retryable: bool, delay: float | None) -> None:
        lease = self.pick_lease(data)
        if self.is_current(lease):
            job = self.jobs[lease.job_id]
            expected = self.after_fail(job, retryable)
            state = self.broker.fail(lease, "boom", retryable=retryable, delay=delay)
            assert state == expected
            job.state = expected
            self.resolve()
        else:
            with pytest.raises(LeaseLost):
                self.broker.fail(lease, "late", retryable=retryable, delay=delay)
            self.expect_stale("fail", lease)

    @precondition(lambda self: bool(self.leases))
    @rule(data=st.data(), delay=st.sampled_from([0.0, TICK]))
    def snooze(self, data: st.DataObject, delay: float) -> None:
        """The handler raised Snooze: queued after `delay`, the attempt not counted; past
        MAX_SNOOZES snoozes the job fails; a requested cancel wins."""
        held = self.pick_lease(data)
        [outcome] = self.broker.finish_many([snoozed(held, delay, MAX_SNOOZES)])
        if not self.is_current(held):
            assert not outcome.applied
            self.expect_stale("snooze", held)
            return
        job = self.jobs[held.job_id]
        if job.cancel_requested:
            expected = "cancelled"
        elif job.snoozes >= MAX_SNOOZES:
            expected = "failed"
        else:
            expected = "queued"
        if job.snoozes < MAX_SNOOZES:
            job.snoozes += 1
            job.attempts -= 1
        assert outcome.applied and outcome.state == expected
        job.state = expected
        self.resolve()  # a snooze past the cap fails the job

    @precondition(lambda self: any(j.state == "queued" for j in self.jobs.values()))
    @rule(data=st.data())
    def deadline_passes(self, data: st.DataObject) -> None:
        """A queued job's deadline passes: no claim starts it from now on."""
        queued = sorted(i for i, j in self.jobs.items() if j.state == "queued")
        job_id = data.draw(st.sampled_from(queued), label="late job")
        self.conn.execute(
            "UPDATE broker.jobs SET deadline = now() - interval '1 second' WHERE id = %s",
            (job_id,),
        )
        self.jobs[job_id].past_deadline = True

    @rule()
    def expire(self) -> None:
        """The reaper's other half: queued jobs past their deadline end cancelled."""
        expired = self.broker.run(expire())
        want = {i for i, j in self.jobs.items() if j.state == "queued" and j.past_deadline}
        assert {r.job_id for r in expired} == want
        assert all(r.state == "cancelled" for r in expired)
        for job_id in want:
            self.jobs[job_id].state = "cancelled"
        self.resolve()  # an expired job cancels its waiting dependents

    @precondition(lambda self: len({lease.job_id for lease in self.leases}) >= 2)
    @rule(data=st.data())
    def complete_batch(self, data: st.DataObject) -> None:
        """One statement, several jobs, a mix of current and stale leases."""
        by_job: dict[int, Lease] = {}
        for lease in data.draw(st.permutations(self.leases), label="order"):
            by_job.setdefault(lease.job_id, lease)
        batch = list(by_job.values())[: data.draw(st.integers(2, 4), label="size")]
        current = {lease.job_id: self.is_current(lease) for lease in batch}
        outcomes = self.broker.complete_many([(lease, None) for lease in batch])
        assert {(o.job_id, o.epoch, o.applied) for o in outcomes} == {
            (lease.job_id, lease.epoch, current[lease.job_id]) for lease in batch
        }
        for lease in batch:
            if current[lease.job_id]:
                self.jobs[lease.job_id].state = "succeeded"
            else:
                self.expect_stale("complete", lease)
        self.resolve()

    # --- invariants ----------------------------------------------------------------------

    @invariant()
    def database_matches_model(self) -> None:
        rows = self.conn.execute(
            "SELECT id, state, attempts, max_attempts, lease_epoch, worker_id,"
            " lease_expires_at IS NOT NULL, cancel_requested_at IS NOT NULL, snoozes"
            " FROM broker.jobs ORDER BY id"
        ).fetchall()
        assert [r[0] for r in rows] == sorted(self.jobs)
        for job_id, state, attempts, max_attempts, epoch, worker, has_expiry, cancel, sn in rows:
            job = self.jobs[job_id]
            assert state in JOB_STATES
            assert 0 <= attempts <= max_attempts
            assert (state, attempts, max_attempts, epoch, sn) == (
                job.state,
                job.attempts,
                job.max_attempts,
                job.epoch,
                job.snoozes,
            ), f"job {job_id}"
            if state == "running":
                assert has_expiry and worker is not None
                assert cancel == job.cancel_requested
                holders = [lease for lease in self.leases if self.is_current(lease)]
                assert [lease.worker_id for lease in holders if lease.job_id == job_id] == [worker]
            else:
                assert not has_expiry

    @invariant()
    def waiting_exactly_while_dependencies_are_pending(self) -> None:
        """No job is left waiting for dependencies that all succeeded, or for one that
        failed or was cancelled (whatever the model says)."""
        stuck = self.conn.execute(
            "SELECT c.id FROM broker.jobs c WHERE c.state = 'waiting' AND ("
            "  NOT EXISTS (SELECT 1 FROM broker.job_dependencies d"
            "              JOIN broker.jobs p ON p.id = d.depends_on"
            "              WHERE d.job_id = c.id AND p.state <> 'succeeded')"
            "  OR EXISTS (SELECT 1 FROM broker.job_dependencies d"
            "             JOIN broker.jobs p ON p.id = d.depends_on"
            "             WHERE d.job_id = c.id AND p.state IN ('failed', 'cancelled')))"
        ).fetchall()
        assert stuck == []

    @invariant()
    def one_claim_per_epoch(self) -> None:
        """A job's epoch counts its claims, and each claim had a new epoch."""
        rows = self.conn.execute(
            "SELECT j.id, j.lease_epoch, count(e.id), coalesce(max(e.epoch), 0),"
            "       count(DISTINCT e.epoch)"
            " FROM broker.jobs j LEFT JOIN broker.job_events e"
            "   ON e.job_id = j.id AND e.event = 'claimed'"
            " GROUP BY j.id"
        ).fetchall()
        for job_id, epoch, claims, max_epoch, distinct in rows:
            assert epoch == claims == max_epoch == distinct, f"job {job_id}"

    @invariant()
    def writes_only_under_the_current_epoch(self) -> None:
        """Every outcome event carries the epoch of the claim that was current at the time."""
        rows = self.conn.execute(
            "SELECT e.job_id, e.event, e.epoch,"
            "       (SELECT max(c.epoch) FROM broker.job_events c"
            "        WHERE c.job_id = e.job_id AND c.event = 'claimed' AND c.id < e.id)"
            " FROM broker.job_events e"
            " WHERE e.event IN ('succeeded', 'failed', 'cancelled', 'attempt_failed',"
            "                   'lease_expired', 'cancel_requested', 'snoozed')"
        ).fetchall()
        for job_id, event, epoch, current in rows:
            if epoch is None:
                # Only an operator's cancel of a queued job is written without a lease.
                assert event == "cancelled", f"job {job_id}: {event} without an epoch"
            else:
                assert epoch == current, f"job {job_id}: {event} at epoch {epoch} != {current}"

    @invariant()
    def terminal_once_under_final_epoch(self) -> None:
        rows = self.conn.execute(
            "SELECT j.id, j.state, j.lease_epoch,"
            "       array_agg(e.event ORDER BY e.id) FILTER (WHERE e.event IS NOT NULL),"
            "       array_agg(e.epoch ORDER BY e.id) FILTER (WHERE e.event IS NOT NULL)"
            " FROM broker.jobs j LEFT JOIN broker.job_events e ON e.job_id = j.id"
            "   AND e.event IN ('succeeded', 'failed', 'cancelled', 'dependency_failed',"
            "                   'expired')"
            " GROUP BY j.id"
        ).fetchall()
        for job_id, state, epoch, events, epochs in rows:
            if state in TERMINAL_STATES:
                # A job cancelled for its dependency or its deadline records why.
                ended = [
                    "cancelled" if e in ("dependency_failed", "expired") else e
                    for e in events or []
                ]
                assert ended == [state], f"job {job_id}"
                assert epochs[0] in (epoch, None), f"job {job_id}"
            else:
                assert events is None, f"job {job_id} is {state} after {events}"

    @invariant()
    def stale_writes_recorded(self) -> None:
        rows = self.conn.execute(
            "SELECT detail->>'write', count(*) FROM broker.job_events"
            " WHERE event = 'stale_write_rejected' GROUP BY 1"
        ).fetchall()
        assert Counter({str(w): int(n) for w, n in rows}) == self.stale_writes

    # --- the end: workers stop failing -------------------------------------------------

    def unfinished(self) -> int:
        row = self.conn.execute(
            "SELECT count(*) FROM broker.jobs WHERE state IN ('waiting', 'queued', 'running')"
        ).fetchone()
        assert row is not None
        return int(row[0])

    def teardown(self) -> None:
        if not self.jobs:
            return
        # The workers holding leases finish them; from here on every handler succeeds.
        held = self.current_leases()
        self.broker.complete_many([(lease, "finally") for lease in held])
        rounds = 0
        while self.unfinished():
            rounds += 1
            assert rounds <= FINAL_ROUNDS, f"jobs unfinished after {FINAL_ROUNDS} rounds"
            # Backoffs and leases left over from the random steps run out ...
            advance_db_time(self.conn, MAX_ATTEMPTS * TICK + max(TTLS) + TICK)
            self.broker.reap()
            self.broker.run(expire())
            # ... and every claimed job now succeeds.
            while claimed := self.broker.claim(list(QUEUES), 50, WORKERS[0], max(TTLS)):
                outcomes = self.broker.complete_many([(lease, "finally") for lease in claimed])
                assert all(o.applied for o in outcomes)
        # One round is enough: after it nothing is running and no backoff is pending.
        assert rounds <= 1
        states = self.conn.execute("SELECT state FROM broker.jobs").fetchall()
        assert {s for (s,) in states} <= set(TERMINAL_STATES)
        # The invariants that do not need the model hold for the final stretch too.
        self.one_claim_per_epoch()
        self.writes_only_under_the_current_epoch()
        self.terminal_once_under_final_epoch()


def test_lease_state_machine(db_url: str) -> None:
    with (
        Broker.connect(db_url, max_size=2) as client,
        psycopg.connect(db_url, autocommit=True) as conn,
    ):
        conn.execute(BACKOFF_SQL)
        LeaseMachine.broker = client
        LeaseMachine.conn = conn
        run_state_machine_as_test(
            LeaseMachine,
            settings=settings(
                max_examples=40,
                stateful_step_count=35,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
                database=None,
            ),
        )
