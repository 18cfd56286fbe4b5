"""`broker schedules ...` in-process (click's CliRunner) on the test's database: add, ls
(table and --json), pause, resume, trigger, rm; bad input is one line and exit 2, an
unknown name one line and exit 1."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from tests.acceptance.test_cli import cli, one_error_line


def test_add_ls_pause_resume_trigger_rm(db_url: str, conn: psycopg.Connection[Any]) -> None:
    made = cli(
        db_url,
        "schedules",
        "add",
        "nightly",
        "--kind",
        "report",
        "--cron",
        "0 3 * * *",
        "--tz",
        "Europe/Paris",
        "--args",
        '{"full": true}',
    )
    assert made.exit_code == 0, made.stderr
    assert made.stdout == "schedule nightly saved: cron 0 3 * * * Europe/Paris\n"
    assert cli(db_url, "schedules", "add", "ping", "--kind", "ping", "--every", "30").exit_code == 0
    assert cli(db_url, "schedules", "pause", "ping").stdout == "schedule ping paused\n"
    table = cli(db_url, "schedules", "ls").stdout.splitlines()
    assert table[0].split() == [
        "NAME",
        "KIND",
        "WHEN",
        "NEXT",
        "RUN",
        "LAST",
        "RUN",
        "STATE",
        "WORKERS",
    ]
    assert table[1].split()[:4] == ["nightly", "report", "cron", "0"]
    assert table[1].split()[-2:] == ["active", "orphaned"]
    assert table[2].split()[0] == "ping" and "paused" in table[2].split()
    listed = json.loads(cli(db_url, "schedules", "ls", "--json").stdout)["schedules"]
    assert [s["name"] for s in listed] == ["nightly", "ping"]
    assert listed[0]["args"] == {"full": True} and listed[0]["next_run_at"]
    assert listed[1]["paused"] is True and listed[1]["every"] == 30
    fired = cli(db_url, "schedules", "trigger", "nightly", "--json")
    job_id = json.loads(fired.stdout)["job_id"]
    row = conn.execute("SELECT kind, args FROM broker.jobs WHERE id = %s", (job_id,)).fetchone()
    assert row == ("report", {"full": True})
    assert cli(db_url, "schedules", "resume", "ping").exit_code == 0
    assert cli(db_url, "schedules", "rm", "ping").stdout == "schedule ping removed\n"
    after = json.loads(cli(db_url, "schedules", "ls", "--json").stdout)["schedules"]
    assert [s["name"] for s in after] == ["nightly"] and after[0]["last_job_id"] == job_id


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cron", "61 * * * *"], "invalid cron expression"),
        (["--cron", "* * * *"], "5 fields"),
        (["--every", "0.5"], "every must be between 1"),
        (["--every", "5", "--cron", "* * * * *"], "exactly one of cron or every"),
        ([], "exactly one of cron or every"),
        (["--cron", "* * * * *", "--tz", "Mars/Olympus"], "unknown time zone"),
        (["--every", "5", "--args", "[1]"], "--args must be a JSON object"),
        (["--every", "5", "--backfill", "0"], "backfill must be between 1"),
        (["--every", "abc"], "Invalid value for '--every'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    db_url: str, conn: psycopg.Connection[Any], args: list[str], message: str
) -> None:
    result = cli(db_url, "schedules", "add", "s", "--kind", "report", *args)
    assert result.exit_code == 2, result.stderr
    assert message in one_error_line(result)
    assert conn.execute("SELECT count(*) FROM broker.schedules").fetchone() == (0,)


@pytest.mark.parametrize("action", ["pause", "resume", "trigger", "rm"])
def test_an_unknown_name_is_one_line_and_exit_1(db_url: str, action: str) -> None:
    result = cli(db_url, "schedules", action, "ghost")
    assert result.exit_code == 1
    assert one_error_line(result) == "error: schedule 'ghost' not found"
    bad = cli(db_url, "schedules", action, "bad name")
    assert bad.exit_code == 2 and "schedule name" in one_error_line(bad)
