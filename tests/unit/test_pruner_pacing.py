"""The workers' pruner paces itself on the shared connection (broker.pruner.Paced)."""

from __future__ import annotations

import asyncio
from typing import Any

from broker.lease import Statement
from broker.pruner import Paced, prune_batch


class SlowRunner:
    """Takes 50 ms per statement, and notes when each one started."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    async def run(self, stmt: Statement[Any]) -> Any:
        self.starts.append(asyncio.get_running_loop().time())
        await asyncio.sleep(0.05)
        return 1000


def test_each_batch_is_followed_by_a_rest_as_long_as_it_took() -> None:
    runner = SlowRunner()

    async def main() -> float:
        paced = Paced(runner)
        for _ in range(3):
            assert await paced.run(prune_batch("succeeded", 3600, 1000)) == 1000
        return asyncio.get_running_loop().time()

    ended = asyncio.run(main())
    gaps = [b - a for a, b in zip(runner.starts, [*runner.starts[1:], ended], strict=True)]
    # A batch of 50 ms, then 50 ms free for the connection's other users, every time.
    assert all(gap >= 0.095 for gap in gaps), gaps
