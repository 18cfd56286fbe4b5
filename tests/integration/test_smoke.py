"""The basic lifecycle on a real database: enqueue, claim, complete."""

from __future__ import annotations

from broker import Broker


def test_enqueue_claim_complete(broker: Broker) -> None:
    job = broker.enqueue("hello", {"name": "world"})
    [held] = broker.claim(["default"], 10, "w:1")
    assert (held.job_id, held.epoch, held.args) == (job.id, 1, {"name": "world"})
    broker.complete(held, {"greeting": "hi"})
    done = broker.get_job(job.id)
    assert (done.state, done.result) == ("succeeded", {"greeting": "hi"})
    assert [e.event for e in broker.events(job.id)] == ["enqueued", "claimed", "succeeded"]
