"""`broker dev`: a whole broker on one machine in one command, for trying it out.

Starts (or reuses) the embedded PostgreSQL under BROKER_HOME unless BROKER_DATABASE_URL
is set, migrates it, then runs the REST API and one worker (with broker.examples.tasks)
as child processes until Ctrl-C, when it stops them and the embedded server.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from broker import _env
from broker.config import Settings
from broker.errors import ConfigError

EXAMPLE_TASKS = "broker.examples.tasks"
READY_TIMEOUT = 60.0
STOP_GRACE = 15.0


@dataclass
class DevConfig:
    """What `broker dev` starts."""

    host: str = "127.0.0.1"
    port: int = 8000
    tasks: str = EXAMPLE_TASKS
    concurrency: int = 10
    token: str = field(default_factory=lambda: "dev-" + secrets.token_urlsafe(18))


def _database(settings: Settings) -> tuple[str, Callable[[], None]]:
    """The URL to use and how to stop what was started for it."""
    if settings.database_url:
        return settings.database_url, lambda: None
    from broker.db import EMBEDDED_HINT, embedded_data_dir

    data = embedded_data_dir(settings.home)
    try:
        import pgserver
    except ImportError:
        raise ConfigError(EMBEDDED_HINT) from None
    server = pgserver.get_server(data, cleanup_mode="stop")  # type: ignore[attr-defined]
    return str(server.get_uri()), server.cleanup


Children = dict[str, "subprocess.Popen[bytes]"]


def _exited(children: Children) -> str | None:
    for name, child in children.items():
        if child.poll() is not None:
            return f"the {name} exited (code {child.returncode})"
    return None


def _wait_ready(url: str, children: Children) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if problem := _exited(children):
            raise ConfigError(problem + " during start-up")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise ConfigError(f"the API did not become ready at {url} within {READY_TIMEOUT:g} s")


def _stop(children: Children) -> None:
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    for child in children.values():
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def run(config: DevConfig, echo: Callable[[str], None]) -> int:
    """Run the dev stack until SIGINT/SIGTERM or a child dies; returns the exit code."""
    from broker.migrate import upgrade

    settings = Settings.from_env()
    url, stop_database = _database(settings)
    children: Children = {}
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        upgrade(url, settings.schema)
        env = {
            # Unknown BROKER_* names were reported once, by `broker`; the children ignore them.
            **{k: v for k, v in os.environ.items() if k not in dict(_env.unknown(os.environ))},
            "BROKER_DATABASE_URL": url,
            "BROKER_API_TOKENS": os.environ.get("BROKER_API_TOKENS") or config.token,
            "BROKER_TASKS": config.tasks,
        }
        token = env["BROKER_API_TOKENS"].split(",")[0].split(":")[0]
        python = sys.executable
        children["API"] = subprocess.Popen(
            [
                python,
                "-m",
                "broker.cli",
                "api",
                "--host",
                config.host,
                "--port",
                str(config.port),
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            env=env,
        )
        children["worker"] = subprocess.Popen(
            [
                python,
                "-m",
                "broker.worker",
                "--tasks",
                config.tasks,
                "--concurrency",
                str(config.concurrency),
                "--log-level",
                "WARNING",
            ],
            env={**env, "BROKER_STATE_DIR": str(Path(settings.home) / "state")},
        )
        base = f"http://{config.host}:{config.port}"
        _wait_ready(base, children)
        echo(f"pg-broker is running: API {base} (docs {base}/schema)")
        echo(f"database: {url}")
        echo(f"dev token: {token}")
        echo("enqueue a job:")
        echo(
            f"  curl -s -X POST {base}/v1/jobs -H 'Authorization: Bearer {token}'"
            " -H 'Content-Type: application/json'"
            ' -d \'{"kind": "hello", "args": {"name": "you"}}\''
        )
        echo('then look at it (ID is the "id" in the answer):')
        echo(f"  curl -s {base}/v1/jobs/ID -H 'Authorization: Bearer {token}'")
        echo("Ctrl-C stops everything.")
        while not stopping:
            if problem := _exited(children):
                echo(f"error: {problem}; stopping")
                return 1
            time.sleep(0.2)
        echo("stopping...")
        return 0
    finally:
        _stop(children)
        stop_database()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
