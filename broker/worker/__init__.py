"""The worker process: `python -m broker.worker --tasks pkg.mod --queues q1,q2 --concurrency N`.

`Worker` (runtime.py) is the asyncio runtime; the services it runs each live in their
own module: listener.py (LISTEN wake-ups), writer.py (batched outcomes), reaper.py,
registry.py (identity, liveness, clock skew), supervisor.py (`--processes N`).
"""

from __future__ import annotations

from broker.worker.runtime import Worker, WorkerConfig

__all__ = ["Worker", "WorkerConfig"]
