"""Queue settings: concurrency and rate limits, pause and resume (queries in sql/queues.sql).

Same pattern as broker.lease: each function builds a `Statement` a client runs with
`run()`. The limits are enforced by the claim (job_claim, _claim_flow) in database time;
these only store them. docs/decisions/014-queue-limits.md says how.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from broker.errors import InvalidQueueSettings
from broker.lease import Statement
from broker.spec import _NAME, MAX_DURATION_SECONDS, QUEUE_MAX_LENGTH, QUEUE_RULE, check_text

MAX_LIMIT = 2_147_483_647

# Marks a setting `configure` leaves as stored (None means unlimited, so it cannot).
UNCHANGED: object = object()


@dataclass(frozen=True, slots=True)
class QueueSettings:
    """A queue's stored limits (None: unlimited) and whether it is paused."""

    queue: str
    concurrency_limit: int | None
    rate_limit: int | None
    rate_period_seconds: float | None
    paused: bool


def _limit(value: object, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidQueueSettings(f"{name} must be an integer (or null: unlimited)")
    if not 1 <= value <= MAX_LIMIT:
        raise InvalidQueueSettings(f"{name} must be between 1 and {MAX_LIMIT} (or null: unlimited)")
    return value


def _period(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise InvalidQueueSettings("rate_period must be a number of seconds")
    if not 0 < value <= MAX_DURATION_SECONDS:
        raise InvalidQueueSettings(
            f"rate_period must be positive and at most {MAX_DURATION_SECONDS} seconds"
        )
    return float(value)


def _queue(queue: object) -> str:
    if not (isinstance(queue, str) and len(queue) <= QUEUE_MAX_LENGTH and _NAME.fullmatch(queue)):
        raise InvalidQueueSettings(QUEUE_RULE)
    return queue


def configure(
    queue: str,
    *,
    concurrency_limit: object = UNCHANGED,
    rate_limit: object = UNCHANGED,
    rate_period: object = UNCHANGED,
) -> Statement[QueueSettings]:
    """Set the given limits of `queue` (None: unlimited), keeping the others; rate_period
    in seconds. Raises InvalidQueueSettings for a limit below 1, a period that is not
    positive, or a rate_limit without a rate_period."""
    params = {
        "queue": _queue(queue),
        "set_concurrency": concurrency_limit is not UNCHANGED,
        "concurrency_limit": None
        if concurrency_limit is UNCHANGED
        else _limit(concurrency_limit, "concurrency_limit"),
        "set_rate": rate_limit is not UNCHANGED,
        "rate_limit": None if rate_limit is UNCHANGED else _limit(rate_limit, "rate_limit"),
        "set_period": rate_period is not UNCHANGED,
        "rate_period": None if rate_period is UNCHANGED else _period(rate_period),
    }
    return Statement("queue_configure", params, lambda rows: QueueSettings(*rows[0]))


def pause(queue: str, reason: str | None = None) -> Statement[bool]:
    """Stop claims from `queue` (running jobs finish; enqueues still land); False when it
    was paused already (its reason is replaced)."""
    if reason is not None:
        check_text(reason, "reason")
    return Statement(
        "queue_pause", {"queue": _queue(queue), "reason": reason}, lambda rows: bool(rows[0][0])
    )


def resume(queue: str) -> Statement[bool]:
    """Let workers claim from `queue` again and wake them; False when it was not paused."""
    return Statement("queue_resume", {"queue": _queue(queue)}, lambda rows: bool(rows[0][0]))
