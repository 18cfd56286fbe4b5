"""Tasks with declared queues for the routing tests (`--tasks tasks_fixture,routing_tasks`).

`routing.split` declares the queue named by ROUTING_SPLIT_QUEUE, so two workers can
disagree about it."""

from __future__ import annotations

import os

from broker import task


@task("routing.ok", queue="nc")
def ok() -> str:
    return "ok"


@task("routing.split", queue=os.environ.get("ROUTING_SPLIT_QUEUE", "default"))
def split() -> str:
    return "split"
