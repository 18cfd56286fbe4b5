"""Worker options: the command's defaults are the named constants WorkerConfig uses, and a
supervisor's children parse the supervisor's own arguments, as one process numbered seq."""

from __future__ import annotations

import sys

import click
import pytest

from broker._logging import DEFAULT_LOG_FORMAT
from broker.worker import config, metrics, reaper
from broker.worker.command import ARGV, worker
from broker.worker.supervisor import Supervisor


def parsed(argv: list[str]) -> click.Context:
    return worker.make_context("worker", list(argv))


def test_the_options_default_to_the_named_constants(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CONCURRENCY", "PROCESSES", "WORKER_SEQ", "POLL_INTERVAL", "SHUTDOWN_GRACE"):
        monkeypatch.delenv(f"BROKER_{name}", raising=False)
    monkeypatch.delenv("BROKER_REAP_INTERVAL", raising=False)
    monkeypatch.delenv("BROKER_LOG_LEVEL", raising=False)
    monkeypatch.delenv("BROKER_LOG_FORMAT", raising=False)
    monkeypatch.delenv("BROKER_METRICS_PORT", raising=False)
    monkeypatch.delenv("BROKER_METRICS_HOST", raising=False)
    params = parsed([]).params
    assert params["concurrency"] == config.DEFAULT_CONCURRENCY
    assert params["processes"] == config.DEFAULT_PROCESSES
    assert params["seq"] == config.DEFAULT_SEQ
    assert params["poll_interval"] == config.DEFAULT_POLL_INTERVAL
    assert params["reap_interval"] == reaper.DEFAULT_INTERVAL
    assert params["shutdown_grace"] == config.DEFAULT_SHUTDOWN_GRACE
    assert params["log_level"] == config.DEFAULT_LOG_LEVEL
    assert params["log_format"] == DEFAULT_LOG_FORMAT
    # No metrics server unless asked for.
    assert params["metrics_port"] is None
    assert params["metrics_host"] == metrics.DEFAULT_METRICS_HOST
    built = config.WorkerConfig(database_url="postgresql://x", queues=("q",))
    assert (built.concurrency, built.seq) == (config.DEFAULT_CONCURRENCY, config.DEFAULT_SEQ)
    assert (built.poll_interval, built.shutdown_grace) == (
        config.DEFAULT_POLL_INTERVAL,
        config.DEFAULT_SHUTDOWN_GRACE,
    )
    assert built.reaper.interval == reaper.DEFAULT_INTERVAL


def test_the_command_keeps_the_arguments_it_parsed() -> None:
    argv = ["--tasks", "a.b", "--processes", "3", "--concurrency=7"]
    assert parsed(argv).meta[ARGV] == argv


def test_children_run_the_supervisors_arguments_as_one_process_each() -> None:
    argv = ["--tasks", "a.b,c", "--queues", "q1,q2", "--processes", "3", "--seq", "9"]
    argv += ["--concurrency", "7", "--poll-interval", "0.25", "--max-clock-skew=2"]
    supervisor = Supervisor(3, argv)
    assert [child.seq for child in supervisor.children] == [1, 2, 3]
    for seq in (1, 3):
        command = supervisor.command(seq)
        assert command[:3] == [sys.executable, "-m", "broker.worker"]
        params = parsed(command[3:]).params
        # The last value of an option wins: the child's own number and process count.
        assert (params["seq"], params["processes"]) == (seq, 1)
        assert params["tasks"] == "a.b,c" and params["queues"] == "q1,q2"
        assert params["concurrency"] == 7
        assert params["poll_interval"] == 0.25
        assert params["max_clock_skew"] == 2.0


def test_children_override_seq_and_processes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Children inherit the supervisor's environment, where these may be set too.
    monkeypatch.setenv("BROKER_PROCESSES", "4")
    monkeypatch.setenv("BROKER_WORKER_SEQ", "8")
    params = parsed(Supervisor(4, ["--tasks", "m"]).command(2)[3:]).params
    assert (params["seq"], params["processes"]) == (2, 1)
