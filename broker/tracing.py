"""OpenTelemetry tracing (extra `otel`): a producer span per enqueue call, a consumer span
per job run, and the W3C trace context carried from one to the other in the job's meta.

The enqueue span's context is written into each job's meta with the global propagator
(`traceparent`, `tracestate`, and `baggage` when there is any: meta is the carrier), so
the worker's run span is a child of the enqueue span, in the same trace. A caller that
gives its own trace keys in meta keeps them (its job is then a child of that context).

When opentelemetry is not installed, `trace` is None and every hook here returns at once
(one module-level check, decided at import). When it is installed but the application
set no tracer provider, no span is started and nothing is written into meta; a provider
that records nothing (the API's NoOpTracerProvider) makes spans with no valid context,
which are not written either. docs/tracing.md says how to turn it on;
docs/decisions/021-tracing.md why it is shaped so.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from importlib import metadata
from typing import Any

import msgspec

from broker import spec as contract
from broker.errors import InvalidJobError
from broker.lease import Failed, Finish
from broker.spec import JobSpec
from broker.task import Snooze
from broker.types import Lease

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import ProxyTracerProvider, SpanKind, Status, StatusCode
except ImportError:  # the `otel` extra is not installed: every hook is a no-op
    trace = None  # type: ignore[assignment]

SYSTEM = "pg-broker"
# Attributes: the messaging conventions' names where one fits, pg_broker.* for the rest.
KIND = "pg_broker.job.kind"
JOB_ID = "pg_broker.job.id"
ATTEMPT = "pg_broker.job.attempt"
OUTCOME = "pg_broker.job.outcome"

_NOTHING: AbstractContextManager[None] = nullcontext()

if trace is not None:
    try:
        _version = metadata.version("pg-broker")
    except metadata.PackageNotFoundError:  # running from a source tree
        _version = "0"
    # A proxy until the application sets a provider, then that provider's tracer.
    _tracer = trace.get_tracer("pg-broker", _version)


# Once an application sets its tracer provider it stays set (OpenTelemetry allows one per
# process), so that answer is kept. Until then the question is asked again at most once a
# second: get_tracer_provider() looks OTEL_PYTHON_TRACER_PROVIDER up in os.environ on
# every call, 1-4 us a job run, the largest per-job cost of a worker that traces nothing.
_provider_set = False
_ask_again_at = 0.0
RECHECK_SECONDS = 1.0


def _unconfigured() -> bool:
    """Whether the application has set no tracer provider yet (the API's placeholder is
    still in place): then no span could be recorded, so none is started (measured: 9 us
    per job run otherwise). A provider set later is seen within RECHECK_SECONDS."""
    global _provider_set, _ask_again_at
    if _provider_set:
        return False
    now = time.monotonic()
    if now < _ask_again_at:
        return True
    _ask_again_at = now + RECHECK_SECONDS
    _provider_set = not isinstance(trace.get_tracer_provider(), ProxyTracerProvider)
    return not _provider_set


def enqueue_span(specs: list[JobSpec]) -> AbstractContextManager[list[JobSpec]]:
    """A producer span around one enqueue call; entering it gives `specs` with the span's
    trace context in each one's meta (unchanged without opentelemetry, without a tracer
    provider, or where the caller's meta already holds trace keys)."""
    if trace is None or _unconfigured():
        return nullcontext(specs)
    return _enqueue_span(specs)


@contextmanager
def _enqueue_span(specs: list[JobSpec]) -> Iterator[list[JobSpec]]:
    kinds = {s.kind for s in specs}
    queues = {s.queue for s in specs}
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": "send",
        "messaging.operation.name": "enqueue",
    }
    if len(queues) == 1:
        attributes["messaging.destination.name"] = next(iter(queues))
    if len(kinds) == 1:
        attributes[KIND] = next(iter(kinds))
    if len(specs) != 1:
        attributes["messaging.batch.message_count"] = len(specs)
    name = f"enqueue {next(iter(kinds))}" if len(kinds) == 1 else "enqueue"
    with _tracer.start_as_current_span(name, kind=SpanKind.PRODUCER, attributes=attributes) as span:
        carrier: dict[str, str] = {}
        if span.get_span_context().is_valid:
            propagate.inject(carrier)
        yield [_carry(s, carrier) for s in specs] if carrier else specs


def _carry(spec: JobSpec, carrier: dict[str, str]) -> JobSpec:
    """`spec` with `carrier` added to its meta, unless the caller's meta has trace keys of
    its own or the sum would break the contract (tracing never fails an enqueue)."""
    if not spec.meta:
        return msgspec.structs.replace(spec, meta=carrier)
    if not isinstance(spec.meta, Mapping) or any(key in spec.meta for key in carrier):
        return spec
    meta = {**carrier, **spec.meta}
    try:
        contract.check_meta(meta)
    except InvalidJobError:
        return spec
    return msgspec.structs.replace(spec, meta=meta)


def run_span(job: Lease) -> AbstractContextManager[Any]:
    """A consumer span around one run of `job`'s handler, a child of the trace context its
    meta carries (a new trace when there is none). Gives the span, or None without
    opentelemetry."""
    if trace is None or _unconfigured():
        return _NOTHING
    parent = propagate.extract(job.meta) if job.meta else None
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": "process",
        "messaging.operation.name": "run",
        "messaging.destination.name": job.queue,
        "messaging.message.id": str(job.job_id),
        KIND: job.kind,
        JOB_ID: job.job_id,
        ATTEMPT: job.attempt,
    }
    # Exceptions are the handler's to report (raised); one that escapes here is the
    # worker stopping the handler (cancel, lost lease, shutdown), not a failed job.
    return _tracer.start_as_current_span(
        f"run {job.kind}",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    )


def raised(exc: BaseException) -> None:
    """Record the exception a handler raised on the current run span (a Snooze is not a
    failure and is not recorded)."""
    if trace is None or isinstance(exc, Snooze):
        return
    span = trace.get_current_span()
    if span.is_recording():
        span.record_exception(exc)


def ended(span: Any, row: Finish) -> None:
    """Mark the run span with the outcome the worker asks for (`row`): error status for a
    failed attempt. The job's next state is the database's to decide, after the span."""
    if span is None or not span.is_recording():
        return
    # The worker's names and error lines (imported here: broker.worker imports this module).
    from broker.errors import error_line
    from broker.worker._joblog import OUTCOMES

    span.set_attribute(OUTCOME, OUTCOMES[type(row)])
    if isinstance(row, Failed):
        span.set_status(Status(StatusCode.ERROR, error_line(row.failure.error)))
