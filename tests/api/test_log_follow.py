"""GET /v1/jobs/{id}/logs?follow=true: an event stream that resumes from Last-Event-ID and
delivers lines as they are written (issue 14, item 8)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
from litestar.testing import TestClient

from broker import Broker, JobSpec
from broker.types import Lease
from tests.api.conftest import SUBMIT, bearer
from tests.api.test_jobs import assert_problem

Client = TestClient[Any]
H = bearer(SUBMIT)


def running(broker: Broker) -> Lease:
    broker.enqueue_many([JobSpec("k", queue="follow")])
    [held] = broker.claim(["follow"], 1, "w:1")
    return held


def events(lines: Iterator[str]) -> Iterator[dict[str, str]]:
    """Server-sent events as dicts of their fields."""
    event: dict[str, str] = {}
    for line in lines:
        if not line:
            if event:
                yield event
            event = {}
            continue
        name, _, value = line.partition(":")
        event[name] = value.strip()
    if event:
        yield event


def test_a_reconnect_with_last_event_id_gets_only_later_lines(
    client: Client, broker: Broker
) -> None:
    held = running(broker)
    broker.append_logs([(held, f"l{i}") for i in range(4)])
    broker.complete(held)
    url = f"/v1/jobs/{held.job_id}/logs?follow=true"
    with client.stream("GET", url, headers=H) as r:
        first = list(events(r.iter_lines()))
    logs = [e for e in first if e.get("event") == "log"]
    assert [json.loads(e["data"])["line"] for e in logs] == ["l0", "l1", "l2", "l3"]
    assert first[-1]["event"] == "end" and json.loads(first[-1]["data"])["state"] == "succeeded"

    resumed_at = logs[1]["id"]
    with client.stream("GET", url, headers={**H, "Last-Event-ID": resumed_at}) as r:
        again = list(events(r.iter_lines()))
    assert [json.loads(e["data"])["line"] for e in again if e.get("event") == "log"] == [
        "l2",
        "l3",
    ]
    assert again[-1]["event"] == "end"


def test_a_bad_last_event_id_is_a_400(client: Client, broker: Broker) -> None:
    held = running(broker)
    url = f"/v1/jobs/{held.job_id}/logs?follow=true"
    for bad in ("x", "-1", "1" * 40):
        assert_problem(client.get(url, headers={**H, "Last-Event-ID": bad}), 400)


def test_lines_arrive_while_the_job_runs(live_api: str, broker: Broker) -> None:
    """Against a real server (uvicorn): the stream is sent as it is produced."""
    held = running(broker)
    broker.append_logs([(held, "before")])
    url = f"{live_api}/v1/jobs/{held.job_id}/logs?follow=true"
    with httpx.stream("GET", url, headers=H, timeout=30) as r:
        stream = events(r.iter_lines())
        first = next(stream)
        assert json.loads(first["data"])["line"] == "before"
        # Written after the stream started: sent as written, then the end.
        broker.append_logs([(held, "during")])
        second = next(stream)
        assert json.loads(second["data"])["line"] == "during"
        assert int(second["id"]) > int(first["id"])
        broker.complete(held)
        assert next(stream)["event"] == "end"
