"""Helpers for testing applications that use pg-broker: assert what was enqueued, and run
one task's handler inline without a worker.

    from broker.testing import assert_enqueued, refute_enqueued, run_inline

    def test_signup_sends_welcome(broker):
        signup(broker, "ada@example.com")
        [job] = assert_enqueued(broker, "send_email", args={"to": "ada@example.com"})
        assert run_inline("send_email", job.args).result == {"sent": True}
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from broker.client import Broker
from broker.inspection import MAX_PAGE_SIZE, JobFilter, list_jobs
from broker.task import JobContext, get_task
from broker.types import Job


def _matching(
    broker: Broker, kind: str, args: Mapping[str, Any] | None, queue: str | None, state: str | None
) -> list[Job]:
    found = broker.run(list_jobs(JobFilter(kind=kind, queue=queue, state=state), MAX_PAGE_SIZE))
    if args is not None:
        found = [job for job in found if all(job.args.get(k) == v for k, v in args.items())]
    return sorted(found, key=lambda job: job.id)


def assert_enqueued(
    broker: Broker,
    kind: str,
    *,
    args: Mapping[str, Any] | None = None,
    queue: str | None = None,
    state: str | None = "queued",
    count: int | None = None,
) -> list[Job]:
    """Return the jobs of `kind` whose args contain `args` (and in `queue`/`state`, when
    given); raise AssertionError if there are none, or not exactly `count`."""
    found = _matching(broker, kind, args, queue, state)
    wanted = f"{kind} jobs" + (f" with args ⊇ {dict(args)}" if args else "")
    if count is None and not found:
        raise AssertionError(f"no {state or 'any-state'} {wanted} were enqueued")
    if count is not None and len(found) != count:
        raise AssertionError(f"expected {count} {wanted}, found {len(found)}")
    return found


def refute_enqueued(
    broker: Broker,
    kind: str,
    *,
    args: Mapping[str, Any] | None = None,
    queue: str | None = None,
    state: str | None = "queued",
) -> None:
    """Raise AssertionError if any job matching (as in assert_enqueued) exists."""
    found = _matching(broker, kind, args, queue, state)
    if found:
        raise AssertionError(f"unexpected {kind} jobs enqueued: ids {[job.id for job in found]}")


@dataclass
class InlineRun:
    """What a handler did when run inline: its return value and the lines it logged."""

    result: Any
    logs: list[str] = field(default_factory=list)


def run_inline(kind: str, args: Mapping[str, Any] | None = None, *, attempt: int = 1) -> InlineRun:
    """Run the registered handler for `kind` here and now, as a worker would call it.

    Exceptions (including Retry and Fail) propagate, so a test can assert on them.
    Raises LookupError when no task is registered under `kind`.
    """
    registered = get_task(kind)
    if registered is None:
        raise LookupError(f"no task registered as {kind!r}; import its module first")
    logs: list[str] = []

    async def call() -> Any:
        kwargs = dict(args or {})
        if registered.wants_ctx:
            kwargs["ctx"] = JobContext(
                id=0,
                attempt=attempt,
                epoch=attempt,
                kind=kind,
                queue=registered.queue,
                worker_id="inline",
                _log=logs.append,
                _loop=asyncio.get_running_loop(),
            )
        outcome = registered.fn(**kwargs)
        return await outcome if inspect.isawaitable(outcome) else outcome

    return InlineRun(asyncio.run(call()), logs)
