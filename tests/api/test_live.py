"""Against a real `broker api` server (uvicorn subprocess): SSE follow, the shell worker
example, and a schemathesis run over the served OpenAPI schema."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from broker import Broker
from tests.api.conftest import ADMIN, SUBMIT, WORK, bearer

ROOT = Path(__file__).resolve().parents[2]


def test_logs_follow_streams_lines_until_the_job_ends(live_api: str, broker: Broker) -> None:
    job_id = broker.enqueue("render", queue="sse").id
    (held,) = broker.claim(["sse"], 1, "py:1")
    events: list[tuple[str, dict[str, Any]]] = []
    first_line = threading.Event()

    def follow() -> None:
        url = f"{live_api}/v1/jobs/{job_id}/logs"
        with httpx.stream(
            "GET", url, params={"follow": "true"}, headers=bearer(SUBMIT), timeout=60
        ) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            kind = ""
            for line in r.iter_lines():
                if line.startswith("event:"):
                    kind = line.split(":", 1)[1].strip()
                elif line.startswith("data:"):
                    events.append((kind, json.loads(line.split(":", 1)[1])))
                    if kind == "log":
                        first_line.set()

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    assert broker.append_logs([(held, "starting")]) == 1
    # The line arrives while the job is still running: it is streamed, not replayed at the end.
    assert first_line.wait(timeout=30)
    assert broker.append_logs([(held, "halfway"), (held, "done")]) == 2
    broker.complete(held, {"frames": 3})
    reader.join(timeout=30)
    assert not reader.is_alive()
    assert [(k, d.get("line")) for k, d in events] == [
        ("log", "starting"),
        ("log", "halfway"),
        ("log", "done"),
        ("end", None),
    ]
    assert events[-1][1] == {"id": job_id, "state": "succeeded"}


@pytest.mark.skipif(shutil.which("jq") is None, reason="the example needs jq")
def test_shell_worker_example_runs_jobs(live_api: str) -> None:
    submit = bearer(SUBMIT)
    add = httpx.post(
        f"{live_api}/v1/jobs",
        json={"kind": "add", "args": {"a": 2, "b": 40}, "queue": "sh"},
        headers=submit,
    ).json()["id"]
    unknown = httpx.post(
        f"{live_api}/v1/jobs", json={"kind": "mystery", "queue": "sh"}, headers=submit
    ).json()["id"]
    env = {
        **os.environ,
        "BROKER_URL": live_api,
        "BROKER_TOKEN": WORK,
        "QUEUE": "sh",
        "WORKER_ID": "sh:test",
        "IDLE_EXIT": "1",
    }
    done = subprocess.run(
        ["bash", str(ROOT / "docs/examples/http_worker.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    jobs = {
        j["id"]: j
        for j in httpx.get(f"{live_api}/v1/jobs", params={"queue": "sh"}, headers=submit).json()[
            "jobs"
        ]
    }
    assert (jobs[add]["state"], jobs[add]["result"], jobs[add]["worker_id"]) == (
        "succeeded",
        42,
        "sh:test",
    )
    assert jobs[unknown]["state"] == "failed"
    assert jobs[unknown]["last_error"] == "no handler for mystery"


def test_schemathesis_finds_no_server_errors(live_api: str, tmp_path: Path) -> None:
    pytest.importorskip("schemathesis")
    st = Path(sys.executable).parent / "st"
    # Deterministic generation keeps CI stable; one worker, because schemathesis' own
    # generation is not thread-safe here. Reading logs is left out: with follow=true it
    # streams until the job ends, which a fuzzer's queued job never does (tested above).
    # The hooks put NUL, lone surrogates and deep nesting into bodies and queries.
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.api.schemathesis_hooks",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [
            str(st),
            "run",
            f"{live_api}/schema/openapi.json",
            "-H",
            f"Authorization: Bearer {ADMIN}",
            "--checks",
            "not_a_server_error,response_schema_conformance,"
            "content_type_conformance,status_code_conformance",
            "--phases",
            "coverage,fuzzing",
            "--generation-allow-x00",
            "true",
            "--max-examples",
            "25",
            "--workers",
            "1",
            "--generation-deterministic",
            "--exclude-operation-id",
            "readJobLogs",
            "--request-timeout",
            "30",
        ],
        capture_output=True,
        text=True,
        timeout=400,
        cwd=tmp_path,  # schemathesis writes its own state into the working directory
        env=env,
    )
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]
    assert "passed" in done.stdout
