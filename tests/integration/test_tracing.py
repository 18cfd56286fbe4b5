"""OpenTelemetry (broker.tracing, extra `otel`) against a real database and an in-process
worker: an enqueue span per call, its W3C trace context stored in the job's meta, and the
worker's run span a child of it in the same trace; failures recorded; the caller's meta
kept; the REST API traced through AsyncBroker. Without opentelemetry (made unimportable
in a subprocess) or without a tracer provider, enqueue works and writes no trace meta.
Spans are read back with the SDK's InMemorySpanExporter."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk.trace", reason="the otel extra is not installed")

from litestar.testing import TestClient
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from broker import Broker, JobSpec, task
from broker.config import Settings
from broker.pruner import PrunerConfig
from broker.worker import Worker, WorkerConfig

ROOT = Path(__file__).resolve().parents[2]
QUEUE = "tracing"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
EXPORTER = InMemorySpanExporter()


def _install_provider() -> None:
    """One SDK provider for the process (the global one can be set only once)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))


_install_provider()
tracer = trace.get_tracer("tests.tracing")
inside: list[ReadableSpan] = []


@task("tracing.ok")
async def succeed(n: int) -> int:
    return n


@task("tracing.fails")
def fail(reason: str) -> None:
    # A sync handler runs in the worker's thread pool: its span context goes with it.
    with tracer.start_as_current_span("inside the handler"):
        pass
    raise ValueError(reason)


@pytest.fixture(autouse=True)
def spans() -> Iterator[InMemorySpanExporter]:
    EXPORTER.clear()
    yield EXPORTER
    EXPORTER.clear()


def finished(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def run_worker(db_url: str, tmp_path: Path, done: Callable[[], bool]) -> None:
    """Run a worker in this process on QUEUE until `done()` (read in a thread), then stop."""
    config = WorkerConfig(
        database_url=db_url,
        queues=(QUEUE,),
        concurrency=2,
        settings=Settings(database_url=db_url, home=tmp_path),
        poll_interval=0.2,
        pruner=PrunerConfig(interval=0),
    )
    worker = Worker(config)

    async def main() -> None:
        handle = asyncio.create_task(worker.run())
        try:
            for _ in range(300):
                if await asyncio.to_thread(done):
                    return
                if handle.done():
                    handle.result()
                await asyncio.sleep(0.05)
            raise AssertionError("the jobs did not finish")
        finally:
            worker.stop()
            await asyncio.wait_for(handle, 30)

    asyncio.run(main())


def states(broker: Broker, ids: list[int]) -> list[str]:
    return [broker.get_job(i).state for i in ids]


def ended(broker: Broker, ids: list[int]) -> Callable[[], bool]:
    return lambda: all(s in ("succeeded", "failed") for s in states(broker, ids))


def hex_ids(span: ReadableSpan) -> tuple[str, str]:
    context = span.get_span_context()
    assert context is not None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def traceparent(span: ReadableSpan) -> str:
    """The W3C traceparent of `span`."""
    context = span.get_span_context()
    assert context is not None
    trace_id, span_id = hex_ids(span)
    return f"00-{trace_id}-{span_id}-{int(context.trace_flags):02x}"


def test_the_run_span_is_a_child_of_the_enqueue_span(
    broker: Broker, db_url: str, tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    with tracer.start_as_current_span("request") as request:
        job = broker.enqueue("tracing.ok", {"n": 7}, queue=QUEUE)
    [enqueue] = finished(spans, "enqueue tracing.ok")
    assert enqueue.kind is SpanKind.PRODUCER
    assert enqueue.parent is not None
    assert enqueue.parent.span_id == request.get_span_context().span_id
    assert enqueue.attributes is not None
    assert enqueue.attributes["messaging.system"] == "pg-broker"
    assert enqueue.attributes["messaging.destination.name"] == QUEUE
    # The enqueue span's context is what the job carries, in W3C form.
    trace_id, span_id = hex_ids(enqueue)
    stored = broker.get_job(job.id).meta
    assert stored["traceparent"] == traceparent(enqueue)

    run_worker(db_url, tmp_path, ended(broker, [job.id]))
    [run] = finished(spans, "run tracing.ok")
    assert run.kind is SpanKind.CONSUMER
    assert run.parent is not None and run.parent.span_id == int(span_id, 16)
    assert hex_ids(run)[0] == trace_id == f"{request.get_span_context().trace_id:032x}"
    assert run.attributes is not None
    assert dict(run.attributes) == {
        "messaging.system": "pg-broker",
        "messaging.operation.type": "process",
        "messaging.operation.name": "run",
        "messaging.destination.name": QUEUE,
        "messaging.message.id": str(job.id),
        "pg_broker.job.kind": "tracing.ok",
        "pg_broker.job.id": job.id,
        "pg_broker.job.attempt": 1,
        "pg_broker.job.outcome": "completed",
    }
    assert run.status.status_code is StatusCode.UNSET
    assert states(broker, [job.id]) == ["succeeded"]


def test_enqueue_many_is_one_span_and_every_job_carries_it(
    broker: Broker, db_url: str, tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    # 500 plain specs take the COPY path; 3 with keys take the enqueue_many() function.
    for specs in (
        [JobSpec("tracing.ok", {"n": n}, queue=QUEUE) for n in range(500)],
        [JobSpec("tracing.ok", {"n": n}, queue=QUEUE, idempotency_key=f"k{n}") for n in range(3)],
    ):
        spans.clear()
        done = broker.enqueue_many(specs)
        [enqueue] = finished(spans, "enqueue tracing.ok")
        assert enqueue.attributes is not None
        assert enqueue.attributes["messaging.batch.message_count"] == len(specs)
        trace_id, span_id = hex_ids(enqueue)
        metas = {json.dumps(broker.get_job(e.id).meta) for e in done[:: max(len(done) // 7, 1)]}
        assert metas == {json.dumps({"traceparent": traceparent(enqueue)})}
    ids = [e.id for e in done]
    spans.clear()
    run_worker(db_url, tmp_path, ended(broker, ids))
    runs = [s for s in finished(spans, "run tracing.ok") if s.attributes["pg_broker.job.id"] in ids]  # type: ignore[index]
    assert len(runs) == 3
    assert {(hex_ids(r)[0], r.parent.span_id) for r in runs} == {(trace_id, int(span_id, 16))}  # type: ignore[union-attr]


def test_a_failure_records_the_exception_and_an_error_status(
    broker: Broker, db_url: str, tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    job = broker.enqueue("tracing.fails", {"reason": "no such user"}, queue=QUEUE, max_attempts=1)
    run_worker(db_url, tmp_path, ended(broker, [job.id]))
    [run] = finished(spans, "run tracing.fails")
    assert run.status.status_code is StatusCode.ERROR
    assert run.status.description == "ValueError: no such user"
    assert run.attributes is not None
    assert run.attributes["pg_broker.job.outcome"] == "failed"
    [event] = [e for e in run.events if e.name == "exception"]
    assert event.attributes is not None
    assert event.attributes["exception.type"] == "ValueError"
    assert event.attributes["exception.message"] == "no such user"
    # A span the (sync, threaded) handler made is the run span's child.
    [handler] = finished(spans, "inside the handler")
    assert handler.parent is not None
    assert handler.parent.span_id == run.get_span_context().span_id
    assert states(broker, [job.id]) == ["failed"]


def test_the_callers_meta_is_kept(
    broker: Broker, db_url: str, tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    with tracer.start_as_current_span("request"):
        tenant = broker.enqueue("tracing.ok", {"n": 1}, queue=QUEUE, meta={"tenant": "acme"})
        # A trace context the caller gives wins: the run continues the caller's trace.
        own = broker.enqueue("tracing.ok", {"n": 2}, queue=QUEUE, meta={"traceparent": TRACEPARENT})
    meta = broker.get_job(tenant.id).meta
    assert meta["tenant"] == "acme" and meta["traceparent"].startswith("00-")
    assert broker.get_job(own.id).meta == {"traceparent": TRACEPARENT}
    run_worker(db_url, tmp_path, ended(broker, [tenant.id, own.id]))
    [run] = [
        s
        for s in finished(spans, "run tracing.ok")
        if s.attributes and s.attributes["pg_broker.job.id"] == own.id
    ]
    assert hex_ids(run)[0] == "0af7651916cd43dd8448eb211c80319c"
    assert run.parent is not None and run.parent.span_id == 0xB7AD6B7169203331


def test_a_replayed_request_with_another_trace_returns_the_original_job(
    broker: Broker,
) -> None:
    # meta is not part of the request an idempotency key stands for: a retry of the same
    # request from another trace must not be refused as a different request (PB001).
    made = []
    for attempt in ("first try", "retry"):
        with tracer.start_as_current_span(attempt):
            made.append(broker.enqueue("tracing.ok", {"n": 1}, queue=QUEUE, idempotency_key="o-1"))
    assert made[0].id == made[1].id and [m.created for m in made] == [True, False]


def test_an_invalid_enqueue_ends_its_span_in_error(
    broker: Broker, spans: InMemorySpanExporter
) -> None:
    from broker import InvalidJobError

    with pytest.raises(InvalidJobError):
        broker.enqueue("tracing.ok", {"n": 1}, queue=QUEUE, priority=2**40)
    [enqueue] = finished(spans, "enqueue tracing.ok")
    assert enqueue.status.status_code is StatusCode.ERROR
    # Bad meta is the contract's to refuse, the same with tracing on as off.
    for meta in ("00-abc", ["traceparent"], {"n": 1}, {"k": "x" * 8190}):
        with pytest.raises(InvalidJobError, match="meta"):
            broker.enqueue("tracing.ok", queue=QUEUE, meta=meta)  # type: ignore[arg-type]
    # A meta the trace context would push past the size limit goes without it.
    full = broker.enqueue("tracing.ok", queue=QUEUE, meta={"k": "x" * 8183})
    assert broker.get_job(full.id).meta == {"k": "x" * 8183}


def test_tracing_changes_no_verdict_of_the_contract(broker: Broker) -> None:
    """The five-doors table through the Python door inside a span: trace context is added
    to every accepted job, and no case changes its verdict."""
    from tests.integration.test_five_doors import CASES, python_door, with_parent

    parent = broker.enqueue("parent").id
    door = python_door(broker)
    with tracer.start_as_current_span("request"):
        got = {c.name: door(with_parent(c, parent)) for c in CASES}
    assert got == {c.name: c.verdict for c in CASES}


def test_rest_enqueue_is_traced(db_url: str, spans: InMemorySpanExporter) -> None:
    from api.app import create_app
    from api.config import ApiSettings, parse_tokens
    from tests.api.conftest import SUBMIT, TOKENS, WORK, bearer

    app = create_app(
        Settings(database_url=db_url), api_settings=ApiSettings(tokens=parse_tokens(TOKENS))
    )
    with TestClient(app, raise_server_exceptions=False) as client:
        body = {"kind": "tracing.ok", "args": {"n": 3}, "queue": QUEUE, "meta": {"tenant": "a"}}
        r = client.post("/v1/jobs", json=body, headers=bearer(SUBMIT))
        assert r.status_code == 201, r.text
        created = r.json()
        again = client.get(f"/v1/jobs/{created['id']}", headers=bearer(SUBMIT)).json()
        # A worker in another language gets the carrier with its lease.
        claim = {"worker_id": "w:1", "queues": [QUEUE], "limit": 1}
        leases = client.post("/v1/leases", json=claim, headers=bearer(WORK)).json()["leases"]
    [enqueue] = finished(spans, "enqueue tracing.ok")
    want = {"tenant": "a", "traceparent": traceparent(enqueue)}
    assert created["meta"] == again["meta"] == leases[0]["meta"] == want
    # Requests share one flush (group commit): its span parents on no request's context.
    assert enqueue.parent is None


def test_a_group_commit_flush_parents_on_no_request(
    broker: Broker, db_url: str, spans: InMemorySpanExporter
) -> None:
    """Single REST enqueues arriving together share one statement (api/batcher.py): its
    span must not join the trace of whichever request happened to start the flush."""
    from api.batcher import EnqueueBatcher
    from broker import AsyncBroker

    async def main() -> list[int]:
        async with await AsyncBroker.connect(db_url, min_size=1, max_size=2) as client:
            batcher = EnqueueBatcher()
            pending = []
            for n in range(3):
                with tracer.start_as_current_span(f"request {n}"):
                    spec = JobSpec("tracing.ok", {"n": n}, queue=QUEUE)
                    pending.append(asyncio.create_task(batcher.enqueue(client, spec, None)))
            return [(await p).job.id for p in pending]

    ids = asyncio.run(main())
    enqueues = finished(spans, "enqueue tracing.ok")
    assert enqueues and all(s.parent is None for s in enqueues)
    carried = {broker.get_job(i).meta["traceparent"] for i in ids}
    assert carried <= {traceparent(s) for s in enqueues}


def test_concurrent_threads_keep_their_own_context(
    broker: Broker, spans: InMemorySpanExporter
) -> None:
    got: dict[str, tuple[int, str]] = {}

    def enqueue(name: str) -> None:
        with tracer.start_as_current_span(name) as parent:
            job = broker.enqueue("tracing.ok", {"n": 0}, queue=QUEUE)
            got[name] = (
                parent.get_span_context().trace_id,
                broker.get_job(job.id).meta["traceparent"],
            )

    threads = [threading.Thread(target=enqueue, args=(f"t{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(parent.split("-")[1] == f"{trace_id:032x}" for trace_id, parent in got.values())


def python(code: str, db_url: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BROKER_DATABASE_URL": db_url}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


ENQUEUE = """
import json, os
from broker import Broker, tracing
with Broker.connect(os.environ["BROKER_DATABASE_URL"]) as b:
    one = b.enqueue("tracing.ok", {"n": 1}, queue="tracing")
    many = b.enqueue_many([__import__("broker").JobSpec("tracing.ok", queue="tracing")] * 2)
    mine = b.enqueue("tracing.ok", queue="tracing", meta={"tenant": "acme"})
    metas = [b.get_job(e.id).meta for e in [one, *many, mine]]
print(json.dumps({"enabled": tracing.trace is not None, "metas": metas,
                  "otel_loaded": any(m.startswith("opentelemetry") and sys.modules[m]
                                     for m in sys.modules)}))
"""


def test_without_opentelemetry_enqueue_works_and_writes_no_trace_meta(db_url: str) -> None:
    code = "import sys; sys.modules['opentelemetry'] = None\n" + ENQUEUE.replace(
        "import json, os", "import json, os, sys"
    )
    result = python(code, db_url)
    assert result == {
        "enabled": False,
        "metas": [{}, {}, {}, {"tenant": "acme"}],
        "otel_loaded": False,
    }


def test_without_a_tracer_provider_nothing_is_injected(db_url: str) -> None:
    code = "import sys\n" + ENQUEUE
    result = python(code, db_url)
    assert result["enabled"] is True
    assert result["metas"] == [{}, {}, {}, {"tenant": "acme"}]
