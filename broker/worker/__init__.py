"""The worker process: `python -m broker.worker --tasks pkg.mod --queues q1,q2 --concurrency N`.

`Worker` (runtime.py) is the asyncio runtime; the services it runs each live in their
own module: listener.py (LISTEN wake-ups), writer.py (batched outcomes), heartbeat.py,
reaper.py, registry.py (identity, registration, liveness, clock skew), supervisor.py
(`--processes N`); _outcome.py decides what a handler's result or exception means.
"""

from __future__ import annotations

from broker.worker.config import WorkerConfig
from broker.worker.runtime import Worker

__all__ = ["Worker", "WorkerConfig"]
