"""`python -m broker.worker`: run a worker process (see `broker worker --help`)."""

from __future__ import annotations

from broker.worker.command import worker

if __name__ == "__main__":
    worker(prog_name="python -m broker.worker")
