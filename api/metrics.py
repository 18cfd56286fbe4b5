"""Prometheus metrics: this process's counters and histogram, plus job gauges from the database.

The text exposition format is small enough to write directly; it keeps the API free of
prometheus_client's global registry, which would leak state between apps in tests.
Counters are per API process (Prometheus sums them across instances); job counts by
queue and state are read from the database at scrape time.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable

CLAIM_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)
    return "{" + inner + "}" if inner else ""


class Counter:
    """A monotonically increasing count, per label value."""

    def __init__(self, name: str, help_text: str, label: str) -> None:
        self.name, self.help, self.label = name, help_text, label
        self._values: dict[str, float] = {}
        self._lock = threading.Lock()

    def inc(self, label_value: str, amount: float = 1) -> None:
        with self._lock:
            self._values[label_value] = self._values.get(label_value, 0) + amount

    def value(self, label_value: str) -> float:
        return self._values.get(label_value, 0)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        for value, count in sorted(self._values.items()):
            lines.append(f"{self.name}{_labels([(self.label, value)])} {count:g}")
        return lines


class Histogram:
    """Observations in cumulative buckets, as Prometheus expects."""

    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...]) -> None:
        self.name, self.help, self.buckets = name, help_text, buckets
        self._counts = [0] * (len(buckets) + 1)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            self._counts[bisect.bisect_left(self.buckets, value)] += 1
            self._sum += value

    @property
    def count(self) -> int:
        return sum(self._counts)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        running = 0
        for bound, count in zip(self.buckets, self._counts, strict=False):
            running += count
            lines.append(f'{self.name}_bucket{{le="{bound:g}"}} {running}')
        lines.append(f'{self.name}_bucket{{le="+Inf"}} {self.count}')
        lines.append(f"{self.name}_sum {self._sum:g}")
        lines.append(f"{self.name}_count {self.count}")
        return lines


class Metrics:
    """Everything the API process counts."""

    def __init__(self) -> None:
        self.enqueued = Counter(
            "broker_api_jobs_enqueued_total", "Jobs created through the API.", "queue"
        )
        self.completed = Counter(
            "broker_api_jobs_completed_total",
            "Attempts ended through the API worker protocol, by outcome state.",
            "state",
        )
        self.lease_lost = Counter(
            "broker_api_lease_lost_total",
            "Worker writes rejected because the lease was lost (stale epoch).",
            "write",
        )
        self.claim_latency = Histogram(
            "broker_api_claim_duration_seconds",
            "Time to claim jobs for POST /v1/leases, in seconds.",
            CLAIM_LATENCY_BUCKETS,
        )

    def render(self, job_counts: list[tuple[str, str, int]]) -> str:
        lines = [
            "# HELP broker_jobs Jobs in the database by queue and state.",
            "# TYPE broker_jobs gauge",
        ]
        for queue, state, count in job_counts:
            lines.append(f"broker_jobs{_labels([('queue', queue), ('state', state)])} {count}")
        for metric in (self.enqueued, self.completed, self.lease_lost):
            lines.extend(metric.render())
        lines.extend(self.claim_latency.render())
        return "\n".join(lines) + "\n"
