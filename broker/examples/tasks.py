"""Example tasks run by `broker dev`: enqueue `hello` (or `sleep`, `fail_once`) to watch a
job go through the broker."""

from __future__ import annotations

import asyncio
from typing import Any

from broker.task import JobContext, Retry, task


@task("hello")
def hello(name: str = "world", ctx: JobContext | None = None) -> dict[str, Any]:
    """Greet someone; the greeting is the job's result."""
    if ctx is not None:
        ctx.log(f"greeting {name} (attempt {ctx.attempt})")
    return {"greeting": f"hello, {name}"}


@task("sleep")
async def sleep(seconds: float = 1.0) -> dict[str, float]:
    """Sleep (cooperatively cancellable), to watch a running job, cancel it, or time out."""
    await asyncio.sleep(seconds)
    return {"slept": seconds}


@task("fail_once", max_attempts=3)
def fail_once(ctx: JobContext) -> str:
    """Fail the first attempt and succeed on the retry, to watch the retry path."""
    if ctx.attempt == 1:
        raise Retry(delay=1.0, reason="first attempts always fail here")
    return f"succeeded on attempt {ctx.attempt}"
