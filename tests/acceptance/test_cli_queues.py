"""`broker queues ls | set | pause | resume`: limits and pauses from the command line; bad
input is one `error:` line and exit code 2."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from tests.acceptance.test_cli import cli, one_error_line

Conn = psycopg.Connection[tuple[Any, ...]]


def stored(conn: Conn, queue: str) -> tuple[Any, ...] | None:
    return conn.execute(
        "SELECT concurrency_limit, rate_limit, extract(epoch FROM rate_period)::float8, paused"
        " FROM broker.queues WHERE name = %s",
        (queue,),
    ).fetchone()


def test_set_keeps_what_is_not_given(db_url: str, conn: Conn) -> None:
    r = cli(db_url, "queues", "set", "mail", "--concurrency-limit", "3")
    assert r.exit_code == 0 and r.stdout == "mail: concurrency 3, rate unlimited\n"
    r = cli(db_url, "queues", "set", "mail", "--rate-limit", "10", "--rate-period", "1m")
    assert r.stdout == "mail: concurrency 3, rate 10 per 60s\n"
    assert stored(conn, "mail") == (3, 10, 60.0, False)
    r = cli(db_url, "queues", "set", "mail", "--concurrency-limit", "none", "--json")
    assert json.loads(r.stdout) == {
        "queue": "mail",
        "concurrency_limit": None,
        "rate_limit": 10,
        "rate_period_seconds": 60.0,
        "paused": False,
    }


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (
            ["--concurrency-limit", "0"],
            "error: concurrency_limit must be between 1 and 2147483647 (or null: unlimited)",
        ),
        (
            ["--concurrency-limit", "-2"],
            "error: concurrency_limit must be between 1 and 2147483647 (or null: unlimited)",
        ),
        (["--rate-limit", "5"], "error: rate_limit needs a rate_period"),
        (
            ["--rate-limit", "5", "--rate-period", "0"],
            "error: rate_period must be positive and at most 3155760000 seconds",
        ),
        (
            ["--rate-limit", "x"],
            "error: Invalid value for '--rate-limit': 'x' is not a whole number or 'none'"
            " (see `broker queues set --help`)",
        ),
    ],
)
def test_bad_limits_are_one_line_exit_2(db_url: str, args: list[str], error: str) -> None:
    r = cli(db_url, "queues", "set", "mail", *args)
    assert r.exit_code == 2
    assert one_error_line(r) == error


def test_bad_queue_name_exit_2(db_url: str) -> None:
    r = cli(db_url, "queues", "pause", "no spaces")
    assert r.exit_code == 2 and one_error_line(r).startswith("error: queue must be")


def test_pause_ls_resume(db_url: str, conn: Conn) -> None:
    conn.execute("SELECT broker.enqueue('t', queue => 'mail')")
    assert cli(db_url, "queues", "pause", "mail", "--reason", "deploy").stdout == "mail: paused\n"
    again = cli(db_url, "queues", "pause", "mail", "--reason", "deploy")
    assert again.stdout == "mail: paused (already)\n"
    cli(db_url, "queues", "set", "idle", "--concurrency-limit", "2")
    lines = cli(db_url, "queues", "ls").stdout.splitlines()
    assert lines[0].split() == ["QUEUE", "AVAILABLE", "RUNNING", "CONCURRENCY", "RATE", "PAUSED"]
    assert lines[1].split() == ["idle", "0", "0", "2", "-"]
    assert lines[2].split() == ["mail", "1", "0", "-", "-", "paused"]
    body = json.loads(cli(db_url, "queues", "ls", "--json").stdout)
    assert [q["queue"] for q in body["queues"]] == ["idle", "mail"]
    assert body["queues"][1]["pause_reason"] == "deploy"
    assert cli(db_url, "queues", "resume", "mail").stdout == "mail: resumed\n"
    assert cli(db_url, "queues", "resume", "mail").stdout == "mail: was not paused\n"
    assert stored(conn, "mail") == (None, None, None, False)
