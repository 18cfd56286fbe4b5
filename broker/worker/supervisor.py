"""`broker worker --processes N`: run N worker processes (seq 1..N), restart any that dies.

Python runs one core per process, so N processes use N cores. Children get the
supervisor's own arguments and environment, with `--processes 1 --seq N` appended (the
last value of an option wins); SIGTERM/SIGINT are forwarded (a second one too,
which makes the children hand their jobs back at once). A child that keeps dying soon
after starting is restarted with a growing delay, so a broken deployment does not spin.

With a metrics address (`--metrics-port`) the supervisor serves the metrics its children
record in prometheus_client's multiprocess mode (broker/worker/metrics.py): it prepares the
directory before the first child starts and hands it to them in PROMETHEUS_MULTIPROC_DIR.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType

from broker.worker.metrics import (
    MULTIPROC_ENV,
    MetricsServer,
    MultiprocessDir,
    multiprocess_registry,
)

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.2
RESTART_DELAY_MIN = 0.5
RESTART_DELAY_MAX = 30.0
# A child that ran at least this long counts as healthy: its next restart is immediate.
HEALTHY_AFTER = 10.0


@dataclass
class _Child:
    seq: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    delay: float = RESTART_DELAY_MIN
    restart_at: float = 0.0
    restarts: int = 0


class Supervisor:
    """Starts and watches the worker processes; `run()` returns the exit code."""

    def __init__(
        self, processes: int, argv: Sequence[str], metrics: tuple[str, int] | None = None
    ) -> None:
        """`argv`: the worker command's arguments, which every child runs with; `metrics`:
        the (host, port) to serve the children's metrics on, if any."""
        if processes < 1:
            raise ValueError("processes must be at least 1")
        self.children = [_Child(seq) for seq in range(1, processes + 1)]
        self.argv = list(argv)
        self.metrics = metrics
        self._metrics_dir: MultiprocessDir | None = None
        self._signals = 0

    def command(self, seq: int) -> list[str]:
        """The command line of child `seq`: one process, numbered `seq`."""
        own = ["--processes", "1", "--seq", str(seq)]
        return [sys.executable, "-m", "broker.worker", *self.argv, *own]

    def _spawn(self, child: _Child) -> None:
        env = {**os.environ, "BROKER_SUPERVISOR_PID": str(os.getpid())}
        if self._metrics_dir is not None:
            env[MULTIPROC_ENV] = str(self._metrics_dir.path)
        # A process group of its own: a terminal's Ctrl-C reaches the supervisor only,
        # which forwards it once (a second copy would mean "hand back at once").
        child.proc = subprocess.Popen(self.command(child.seq), env=env, process_group=0)
        child.started = time.monotonic()
        log.info("started worker seq %d (pid %d)", child.seq, child.proc.pid)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        for child in self.children:
            if child.proc is not None and child.proc.poll() is None:
                child.proc.send_signal(signum)

    def run(self) -> int:
        """Supervise until a signal stopped every child. Raises ConfigError, before any
        child starts, when the metrics address cannot be served."""
        server = None
        if self.metrics is not None:
            self._metrics_dir = MultiprocessDir()
            host, port = self.metrics
            try:
                server = MetricsServer(multiprocess_registry(self._metrics_dir.path), host, port)
            except BaseException:
                self._metrics_dir.close()
                raise
        try:
            return self._supervise()
        finally:
            if server is not None:
                server.stop()
            if self._metrics_dir is not None:
                self._metrics_dir.close()

    def _supervise(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        for child in self.children:
            self._spawn(child)
        while True:
            now = time.monotonic()
            alive = 0
            for child in self.children:
                proc = child.proc
                if proc is not None and proc.poll() is None:
                    alive += 1
                    continue
                if self._signals:
                    continue
                if proc is not None:
                    if self._metrics_dir is not None:
                        self._metrics_dir.process_died(proc.pid)
                    ran = now - child.started
                    child.delay = (
                        RESTART_DELAY_MIN
                        if ran >= HEALTHY_AFTER
                        else min(RESTART_DELAY_MAX, child.delay * 2)
                    )
                    log.warning(
                        "worker seq %d (pid %d) exited with %s after %.1fs; restarting in %.1fs",
                        child.seq,
                        proc.pid,
                        proc.returncode,
                        ran,
                        child.delay,
                    )
                    child.proc = None
                    child.restart_at = now + child.delay
                elif now >= child.restart_at:
                    child.restarts += 1
                    self._spawn(child)
                    alive += 1
            if self._signals and alive == 0:
                return 0
            time.sleep(POLL_INTERVAL)
