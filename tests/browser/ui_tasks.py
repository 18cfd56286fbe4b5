"""Tasks the browser tests run in a real worker process (`--tasks tests.browser.ui_tasks`)."""

from __future__ import annotations

import asyncio

from broker import JobContext, task


@task("ui.flaky", max_attempts=1)
async def flaky(ctx: JobContext, note: str = "") -> dict[str, object]:
    """Fails its first attempt (so the job ends failed), succeeds once retried."""
    ctx.log(f"attempt {ctx.attempt} starts")
    if ctx.attempt == 1:
        raise ValueError(f"attempt 1 fails on purpose {note}")
    return {"attempt": ctx.attempt, "note": note}


@task("ui.slow")
async def slow(ctx: JobContext) -> None:
    """Logs a line every 0.2 s until the worker stops it (a cancel)."""
    tick = 0
    while not ctx.cancelled.is_set():
        tick += 1
        ctx.log(f"tick {tick}")
        await asyncio.sleep(0.2)


@task("ui.report", every=3600)
async def report() -> str:
    """A periodic task, so the schedules page has a row."""
    return "done"
