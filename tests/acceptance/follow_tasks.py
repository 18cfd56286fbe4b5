"""A task whose log lines come slowly, for `broker jobs logs --follow` (with tasks_fixture)."""

from __future__ import annotations

import asyncio

from broker import JobContext, task


@task("follow.slow_lines")
async def slow_lines(ctx: JobContext, n: int = 3, pause: float = 1.0) -> int:
    for i in range(n):
        ctx.log(f"slow line {i}")
        await asyncio.sleep(pause)
    return n
