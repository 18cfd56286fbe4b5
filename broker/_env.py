"""Every BROKER_* environment variable pg-broker reads, in one list, and the check that
flags the others: a mistyped name (BROKER_DATABSE_URL) is otherwise silently ignored, and
the default it leaves in place (an embedded database, no tokens) is not what was meant.

A name read anywhere (broker.config, api.config, the worker's options, broker.pruner, the
test suite, the docs' scripts) belongs here; tests/unit/test_env.py finds every BROKER_*
name in the source and fails for one that is missing.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping

PREFIX = "BROKER_"

KNOWN: frozenset[str] = frozenset(
    {
        # broker.config.Settings and broker.db
        "BROKER_DATABASE_URL",
        "BROKER_SCHEMA",
        "BROKER_LEASE_TTL",
        "BROKER_CLOCK_SKEW_TOLERANCE",
        "BROKER_HOME",
        "BROKER_STATE_DIR",
        "BROKER_LISTEN_URL",
        "BROKER_PREPARE_THRESHOLD",
        # api.config.ApiSettings and the operator UI
        "BROKER_API_TOKENS",
        "BROKER_API_AUTH",
        "BROKER_API_MAX_BODY_BYTES",
        "BROKER_API_POOL_SIZE",
        "BROKER_API_DB_WAIT",
        "BROKER_UI_SECRET",
        # the worker's options (broker.worker.command)
        "BROKER_TASKS",
        "BROKER_QUEUES",
        "BROKER_CONCURRENCY",
        "BROKER_PROCESSES",
        "BROKER_WORKER_SEQ",
        "BROKER_POLL_INTERVAL",
        "BROKER_REAP_INTERVAL",
        "BROKER_SHUTDOWN_GRACE",
        "BROKER_MAX_CLOCK_SKEW",
        "BROKER_METRICS_PORT",
        "BROKER_METRICS_HOST",
        "BROKER_LOG_LEVEL",
        "BROKER_LOG_FORMAT",
        "BROKER_DJANGO",
        # set by the supervisor for its worker processes
        "BROKER_SUPERVISOR_PID",
        # broker.pruner
        "BROKER_PRUNE_INTERVAL",
        "BROKER_RETENTION_SUCCEEDED",
        "BROKER_RETENTION_FAILED",
        "BROKER_RETENTION_CANCELLED",
        # the test suite and the benchmarks
        "BROKER_TEST_DATABASE_URL",
        "BROKER_PLAN_TEST_ROWS",
        "BROKER_BENCH_DSN",
        "BROKER_TEST_CHROMIUM",
        "BROKER_UI_SCREENSHOTS",
        # docs/examples/http_worker.sh
        "BROKER_URL",
        "BROKER_TOKEN",
    }
)


def unknown(
    environ: Mapping[str, str], known: Iterable[str] = KNOWN
) -> list[tuple[str, str | None]]:
    """The BROKER_* names in `environ` that pg-broker does not read, each with the known
    name closest to it (None when none is close), sorted by name."""
    names = sorted(known)
    found = []
    for name in sorted(environ):
        if name.startswith(PREFIX) and name not in names:
            close = difflib.get_close_matches(name, names, n=1, cutoff=0.75)
            found.append((name, close[0] if close else None))
    return found


def warnings(environ: Mapping[str, str] | None = None) -> list[str]:
    """One line per unknown BROKER_* variable in `environ` (default: os.environ)."""
    lines = []
    for name, close in unknown(os.environ if environ is None else environ):
        hint = f"; did you mean {close}?" if close else ""
        lines.append(f"warning: {name} is not a pg-broker setting and is ignored{hint}")
    return lines
