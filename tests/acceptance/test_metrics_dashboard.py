"""docs/grafana/pg-broker.json queries only metrics we export: every PromQL expression of
the dashboard (panels and template variables), and of the `promql` blocks in
docs/metrics.md, names metrics found in live scrapes of a real API app and of a real
worker process's --metrics-port, never a hand-kept list."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import TestClient
from prometheus_client.parser import text_string_to_metric_families
from worker_harness import ROOT, WorkerProcess, create_runs_table, scalar, wait_for

from api.app import create_app
from api.config import ApiSettings, parse_tokens
from broker import Broker, JobSpec
from broker.config import Settings

DASHBOARD = ROOT / "docs" / "grafana" / "pg-broker.json"
GUIDE = ROOT / "docs" / "metrics.md"
TOKEN = "dashboard-test-token"

# Words of PromQL that are not metric names: operators, modifiers, grouping keywords.
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
KEYWORDS |= {"and", "or", "unless", "atan2", "inf", "nan", "start", "end"}
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
MATCHERS = re.compile(r"\{[^{}]*\}")
RANGES = re.compile(r"\[[^\[\]]*\]")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
NAME = re.compile(r"(?<![A-Za-z0-9_:.$])[A-Za-z_:][A-Za-z0-9_:]*")
LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(?P<expr>.*),)?\s*(?P<label>\w+)\s*\)\s*$")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: what is left once strings, label
    matchers, ranges and grouping labels are removed, minus function calls and keywords."""
    text = STRING.sub('""', expr)
    text = MATCHERS.sub("", text)
    text = RANGES.sub("", text)
    text = GROUPING.sub("", text)
    names = set()
    for match in NAME.finditer(text):
        if re.match(r"\s*\(", text[match.end() :]):
            continue  # a function or an aggregation: rate(, sum(, histogram_quantile(
        if match.group().lower() not in KEYWORDS:
            names.add(match.group())
    return names


def variable_expr(query: Any) -> str | None:
    """The PromQL inside a template variable's query (Grafana's label_values(expr, label)),
    or None when it selects no metric."""
    text = query.get("query") if isinstance(query, dict) else query
    if not isinstance(text, str):
        return None
    found = LABEL_VALUES.match(text)
    if found:
        return found.group("expr")
    return text


def dashboard_expressions(dashboard: dict[str, Any]) -> list[str]:
    exprs: list[str] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            exprs.extend(t["expr"] for t in panel.get("targets", []) if t.get("expr"))
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            expr = variable_expr(variable["query"])
            if expr:
                exprs.append(expr)
    return exprs


def test_the_extractor_finds_metric_names_and_nothing_else() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, route) (rate(a_seconds_bucket{route=~"/v1.*",'
        'x="sum(b)"}[$__rate_interval] offset 5m))) / ignoring(kind) c_total and on(q) d'
        " > bool 1e3"
    )
    assert metric_names(expr) == {"a_seconds_bucket", "c_total", "d"}
    assert variable_expr({"query": "label_values(broker_jobs, queue)"}) == "broker_jobs"
    assert variable_expr("label_values(queue)") is None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sample_names(text: str) -> set[str]:
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def api_scrape(db_url: str) -> set[str]:
    """What a real API app exports once it has served requests and read a database with a
    job in it."""
    settings = ApiSettings(tokens=parse_tokens(TOKEN))
    app = create_app(Settings(database_url=db_url), api_settings=settings)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with TestClient(app) as client:
        assert client.post("/v1/jobs", json={"kind": "k"}, headers=auth).status_code == 201
        client.post("/v1/leases", json={"worker_id": "w:1", "queues": ["default"]}, headers=auth)
        client.get("/metrics", headers=auth)
        r = client.get("/metrics", headers=auth)
        assert r.status_code == 200
        return sample_names(r.text)


def worker_scrape(db_url: str, broker: Broker, state_dir: Path) -> set[str]:
    """What a real worker process exports on --metrics-port once it has run a job."""
    create_runs_table(db_url)
    port = free_port()
    args = ["--metrics-port", str(port), "--metrics-host", "127.0.0.1"]
    with WorkerProcess(db_url, state_dir, args) as proc:
        broker.enqueue_many([JobSpec("record")])
        wait_for(
            lambda: scalar(db_url, "SELECT count(*) FROM broker.jobs WHERE state = 'succeeded'"),
            30,
            "the job to run",
            diagnose=proc.output,
        )
        url = f"http://127.0.0.1:{port}/metrics"
        counted = 'broker_worker_jobs_total{kind="record",outcome="succeeded"} 1.0'
        wait_for(lambda: counted in httpx.get(url, timeout=5).text, 10, "the outcome counted")
        names = sample_names(httpx.get(url, timeout=5).text)
        assert proc.stop() == 0
    return names


@pytest.fixture
def exported(db_url: str, broker: Broker, tmp_path: Path) -> set[str]:
    return api_scrape(db_url) | worker_scrape(db_url, broker, tmp_path)


def guide_expressions() -> list[str]:
    """One expression per line of the guide's promql blocks, comments dropped."""
    blocks = re.findall(r"```promql\n(.*?)```", GUIDE.read_text(), flags=re.DOTALL)
    lines = (line.split("#")[0].strip() for block in blocks for line in block.splitlines())
    return [line for line in lines if line]


def test_every_dashboard_query_names_exported_metrics(exported: set[str]) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = dashboard_expressions(dashboard)
    assert guide_expressions(), "docs/metrics.md lost its promql examples"
    exprs += guide_expressions()
    used: dict[str, list[str]] = {}
    for expr in exprs:
        names = metric_names(expr)
        assert names, f"no metric found in {expr!r}"
        for name in names:
            used.setdefault(name, []).append(expr)
    unknown = {name: where for name, where in used.items() if name not in exported}
    assert not unknown, f"the dashboard queries metrics nobody exports: {unknown}"
    # What operators look at first is on it.
    for name in (
        "broker_jobs",
        "broker_queue_oldest_age_seconds",
        "broker_workers_alive",
        "broker_worker_jobs_total",
        "broker_worker_job_run_seconds_bucket",
        "broker_worker_leases_lost_total",
        "broker_worker_stale_writes_total",
        "broker_api_http_requests_total",
        "broker_api_http_request_duration_seconds_bucket",
    ):
        assert name in used, name
