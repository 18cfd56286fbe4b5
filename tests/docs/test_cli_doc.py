"""docs/cli.md runs as written: every `console` block in order, against a fresh database."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from broker.cli import main

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
FENCE = re.compile(r"```(\w+)([^\n]*)\n(.*?)```", flags=re.DOTALL)


def runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]  # click < 8.2
    except TypeError:
        return CliRunner()


def shape(value: Any) -> Any:
    """The keys of a JSON value, recursively (lists by their first item); not the values."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return None


WORDS = {"paused", "alive", "gone", "stopped", "queued", "running", "succeeded", "cancelled"}
DATE = re.compile(r"^\d{4}-\d\d-\d\d$")


def key(line: str) -> tuple[str, set[str]]:
    """What a table line must keep: its first column (unless a time) and its state words."""
    words = line.split()
    first = words[0] if words and not DATE.match(words[0]) else ""
    return first, WORDS & set(words)


def steps() -> list[tuple[str, str, list[str]]]:
    """("sql", query, []) and ("console", command line, documented output lines), in order."""
    found: list[tuple[str, str, list[str]]] = []
    for language, _, body in FENCE.findall(DOC.read_text()):
        if language == "sql":
            found.append(("sql", body, []))
        if language != "console":
            continue
        for line in body.splitlines():
            if line.startswith("$ "):
                found.append(("console", line[2:], []))
            else:
                found[-1][2].append(line)
    return found


def test_cli_doc_examples_run(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for language, info, body in FENCE.findall(DOC.read_text()):
        if language == "jsonl":
            (tmp_path / info.strip()).write_text(body)
    monkeypatch.chdir(tmp_path)
    with psycopg.connect(db_url, autocommit=True) as conn:
        # The workers example shows one registered worker.
        conn.execute(
            "INSERT INTO broker.workers (worker_id, host_id, seq, hostname, pid, queues,"
            " concurrency, clock_skew_seconds) VALUES ('6f1c2d4e-8a9b-4c3d-9e2f-1a2b3c4d5e6f:1',"
            " '6f1c2d4e-8a9b-4c3d-9e2f-1a2b3c4d5e6f', 1, 'web-1', 4242,"
            " ARRAY['default', 'emails'], 8, 0.004)"
        )
    env = {"BROKER_DATABASE_URL": db_url, "BROKER_SCHEMA": None, "BROKER_LEASE_TTL": None}
    ran = steps()
    assert sum(kind == "console" for kind, _, _ in ran) >= 10
    for kind, command, documented in ran:
        if kind == "sql":
            with psycopg.connect(db_url, autocommit=True) as conn:
                conn.execute(command.encode())
            continue
        argv = shlex.split(command)
        assert argv[0] == "broker", command
        result = runner().invoke(
            main, argv[1:], env=env, catch_exceptions=False, prog_name="broker"
        )
        errors = [line for line in documented if line.startswith("error: ")]
        if errors:
            assert result.exit_code in (1, 2), command
            assert result.stderr.splitlines() == errors, command
            continue
        assert result.exit_code == 0, f"{command}: {result.stderr}"
        got = result.stdout.splitlines()
        assert len(got) == len(documented), command
        if documented[0].startswith("{"):
            assert shape(json.loads(got[0])) == shape(json.loads(documented[0])), command
        else:
            assert got[0].split() == documented[0].split(), command
            for doc_line, got_line in zip(documented[1:], got[1:], strict=True):
                assert key(got_line) == key(doc_line), f"{command}: {got_line!r}"


@pytest.mark.skipif(shutil.which("jq") is None, reason="the documented script uses jq")
def test_cli_doc_paging_script_runs(db_url: str) -> None:
    """The `bash` block that walks every failed job with jq pages through all of them."""
    [script] = [body for lang, _, body in FENCE.findall(DOC.read_text()) if "jq" in body]
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO broker.jobs (kind, state, finished_at, last_error)"
            " SELECT 'k', 'failed', now(), 'boom ' || n FROM generate_series(1, 501) n"
        )
    env = {
        **os.environ,
        "BROKER_DATABASE_URL": db_url,
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
    }
    out = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.splitlines()
    assert len(out) == 501 and len({line.split()[0] for line in out}) == 501
    assert all(line.split()[1:3] == ["k", "boom"] for line in out)
