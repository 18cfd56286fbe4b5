"""A task's declared queue is where its jobs go when the enqueuer names the task and no
queue (issue: scheduling and flow control, item 7)."""

from __future__ import annotations

import asyncio

from broker import AsyncBroker, Broker, task
from broker.client import declared_queue


@task("declared_queue.mail", queue="mail")
def mail() -> None:
    """Registered in this process only: the REST API and the CLI never see it."""


def queue_of(broker: Broker, job_id: int) -> str:
    return broker.get_job(job_id).queue


def test_a_registered_task_sends_its_jobs_to_its_queue(broker: Broker) -> None:
    assert queue_of(broker, broker.enqueue("declared_queue.mail").id) == "mail"
    assert queue_of(broker, broker.enqueue("declared_queue.mail", queue="urgent").id) == "urgent"
    # The default queue named explicitly is an explicit choice, too.
    assert queue_of(broker, broker.enqueue("declared_queue.mail", queue="default").id) == "default"


def test_an_unregistered_kind_goes_to_the_default_queue(broker: Broker) -> None:
    assert declared_queue("declared_queue.nobody") == "default"
    assert queue_of(broker, broker.enqueue("declared_queue.nobody").id) == "default"


def test_the_async_client_routes_the_same_way(db_url: str) -> None:
    async def go() -> tuple[str, str]:
        async with await AsyncBroker.connect(db_url, min_size=1, max_size=1) as client:
            routed = await client.enqueue("declared_queue.mail")
            plain = await client.enqueue("declared_queue.nobody")
            return (
                (await client.get_job(routed.id)).queue,
                (await client.get_job(plain.id)).queue,
            )

    assert asyncio.run(go()) == ("mail", "default")
