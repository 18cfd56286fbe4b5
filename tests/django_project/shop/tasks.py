"""The test app's tasks: sync and async, with and without a context, on two queues."""

from __future__ import annotations

from typing import Any

from django.db import connection

try:
    from django.tasks import TaskContext, task
except ImportError:  # Python 3.11: the django-tasks backport
    from django_tasks import TaskContext, task  # type: ignore[no-redef]


class PaymentDeclined(Exception):
    pass


@task
def add(a: int, b: int) -> int:
    return a + b


@task
def greet(name: str, *, punctuation: str = "!") -> dict[str, Any]:
    return {"greeting": f"hello {name}{punctuation}"}


@task
async def double(x: int) -> int:
    return 2 * x


@task
def charge(card: str) -> None:
    raise PaymentDeclined(f"card {card} declined")


@task(queue_name="emails", priority=50)
def send_email(to: str) -> str:
    return f"sent to {to}"


@task(takes_context=True)
def whoami(context: TaskContext, note: str) -> dict[str, Any]:
    result = context.task_result
    return {"attempt": context.attempt, "id": result.id, "status": str(result.status), "note": note}


@task(takes_context=True, backend="retrying")
async def flaky(context: TaskContext) -> int:
    if context.attempt == 1:
        raise RuntimeError("first attempt fails")
    return context.attempt


@task
def database_name() -> str:
    """Uses Django's own connection in the worker."""
    with connection.cursor() as cur:
        cur.execute("SELECT current_database()")
        return str(cur.fetchone()[0])
