"""Claim races: 50 connections fire a claim at one queued job at the same instant, 200 times.

The same harness runs the real `lease.claim` statement (exactly one winner every round)
and a naive read-then-update claim written here (several winners in some round), which
shows the harness can tell a correct claim from a broken one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import psycopg
import pytest

from broker import Broker, lease

RACERS = 50
ROUNDS = 200
# Generous: 2 shared cores, other test runs on the same server.
BARRIER_TIMEOUT = 120.0

Conn = psycopg.Connection[tuple[Any, ...]]
# One claim attempt on the racer's own connection: the ids of the jobs it won.
ClaimFn = Callable[[Conn, int], list[int]]


@pytest.fixture
def racer_conns(db_url: str) -> Iterator[list[Conn]]:
    """RACERS autocommit connections, opened before any race and reused by every round."""
    with ExitStack() as stack:
        yield [stack.enter_context(psycopg.connect(db_url, autocommit=True)) for _ in range(RACERS)]


def race(
    conns: list[Conn], rounds: int, enqueue: Callable[[], int], claim: ClaimFn
) -> list[tuple[int, list[int]]]:
    """Run `rounds` races; each enqueues one job, then every racer claims at the same time.

    Returns, per round, the job enqueued and the ids won by all racers together (one
    entry per win, so a job won twice appears twice).
    """
    start = threading.Barrier(len(conns) + 1, timeout=BARRIER_TIMEOUT)
    done = threading.Barrier(len(conns) + 1, timeout=BARRIER_TIMEOUT)
    wins: list[list[int]] = [[] for _ in conns]
    errors: list[BaseException] = []

    def racer(index: int, conn: Conn) -> None:
        try:
            for _ in range(rounds):
                start.wait()
                wins[index] = claim(conn, index)
                done.wait()
        except threading.BrokenBarrierError:
            pass
        except BaseException as exc:
            errors.append(exc)
            start.abort()
            done.abort()

    threads = [
        threading.Thread(target=racer, args=(i, c), daemon=True) for i, c in enumerate(conns)
    ]
    for thread in threads:
        thread.start()
    results: list[tuple[int, list[int]]] = []
    try:
        for _ in range(rounds):
            job_id = enqueue()
            start.wait()
            done.wait()
            results.append((job_id, [won for per_racer in wins for won in per_racer]))
    except threading.BrokenBarrierError:
        pass
    finally:
        start.abort()
        done.abort()
        for thread in threads:
            thread.join(BARRIER_TIMEOUT)
    if errors:
        raise errors[0]
    assert len(results) == rounds, "the race harness stopped early"
    return results


def test_exactly_one_winner_per_round(broker: Broker, racer_conns: list[Conn], conn: Conn) -> None:
    leases: dict[int, list[lease.Lease]] = {}
    lock = threading.Lock()

    def claim(c: Conn, index: int) -> list[int]:
        won = broker.run(lease.claim(["default"], 1, f"racer:{index}", 60.0), conn=c)
        with lock:
            for held in won:
                leases.setdefault(held.job_id, []).append(held)
        return [held.job_id for held in won]

    results = race(racer_conns, ROUNDS, lambda: broker.enqueue("race").id, claim)

    for job_id, winners in results:
        assert winners == [job_id]
        [held] = leases[job_id]
        assert held.epoch == 1
    claimed: dict[int, int] = dict(
        conn.execute(
            "SELECT job_id, count(*) FROM broker.job_events WHERE event = 'claimed' GROUP BY job_id"
        ).fetchall()
    )
    assert claimed == {job_id: 1 for job_id, _ in results}
    rows = conn.execute(
        "SELECT state, lease_epoch, attempts, count(*) FROM broker.jobs GROUP BY 1, 2, 3"
    ).fetchall()
    assert rows == [("running", 1, 1, ROUNDS)]


def _naive_claim(c: Conn, index: int) -> list[int]:
    """The classic bug: read a queued row, then update it, with no lock and no re-check."""
    row = c.execute("SELECT id FROM broker.jobs WHERE state = 'queued' LIMIT 1").fetchone()
    if row is None:
        return []
    updated = c.execute(
        "UPDATE broker.jobs SET state = 'running', lease_epoch = lease_epoch + 1,"
        " worker_id = %s WHERE id = %s RETURNING id",
        (f"racer:{index}", row[0]),
    ).fetchall()
    return [int(r[0]) for r in updated]


def test_harness_catches_a_naive_claim(broker: Broker, racer_conns: list[Conn]) -> None:
    # Observed on 2 shared cores, 50 racers, 200 rounds: "naive claim: 200/200 rounds had
    # 2+ winners (most: 50)" on both PostgreSQL 15 and the embedded PostgreSQL 16, while the
    # real claim had exactly one winner in 200/200. One doubled round is enough to prove
    # the harness detects double claims.
    results = race(racer_conns, ROUNDS, lambda: broker.enqueue("race").id, _naive_claim)
    doubled = [winners for _, winners in results if len(winners) > 1]
    most = max((len(w) for _, w in results), default=0)
    print(f"naive claim: {len(doubled)}/{ROUNDS} rounds had 2+ winners (most: {most})")
    assert doubled
