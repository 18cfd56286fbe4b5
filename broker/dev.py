"""`broker dev`: a whole broker on one machine in one command, for trying it out.

Starts (or reuses) the embedded PostgreSQL under BROKER_HOME unless BROKER_DATABASE_URL
is set, migrates it, then runs the REST API and one worker (with broker.examples.tasks)
as child processes until Ctrl-C, when it stops them and the embedded server. It prints
how to use the API (token, curls) only once the API answers on its port.

The children run in their own process group, so a Ctrl-C in the terminal reaches this
process alone, which passes it on once: the worker drains (running jobs finish, up to its
shutdown grace); a second Ctrl-C passes on a second signal, and the worker hands the
running jobs back at once. The dev token is kept in BROKER_HOME/dev-token, so it stays
the same from run to run (curls copied from the last run still work).
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
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
from broker.worker.config import DEFAULT_SHUTDOWN_GRACE

EXAMPLE_TASKS = "broker.examples.tasks"
READY_TIMEOUT = 60.0
# How long the children get after the first Ctrl-C: the worker's drain, and a margin.
STOP_GRACE = DEFAULT_SHUTDOWN_GRACE + 10.0
TOKEN_FILE = "dev-token"


@dataclass
class DevConfig:
    """What `broker dev` starts; `token` None means the one kept under BROKER_HOME."""

    host: str = "127.0.0.1"
    port: int = 8000
    tasks: str = EXAMPLE_TASKS
    concurrency: int = 10
    token: str | None = field(default=None)


def dev_token(home: Path) -> str:
    """The dev API token kept in `home`/dev-token (0600), created on first use."""
    path = Path(home) / TOKEN_FILE
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        token = ""
    if token:
        return token
    path.parent.mkdir(parents=True, exist_ok=True)
    token = "dev-" + secrets.token_urlsafe(18)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")
    return token


def check_port_free(host: str, port: int) -> None:
    """Raise ConfigError when `host`:`port` cannot be bound (another server has it)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        # As uvicorn binds: a port in TIME_WAIT is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host}:{port}: {exc.strerror}; stop what uses it or pass --port"
            ) from None


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
                # Ready, and from our API: a server that took the port first would answer
                # while ours exits.
                if response.status == 200 and not _exited(children):
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise ConfigError(f"the API did not become ready at {url} within {READY_TIMEOUT:g} s")


def _signal_all(children: Children) -> None:
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)


def _stop(children: Children, signals: Callable[[], int]) -> None:
    """Signal the children once and wait for them (the worker drains); each further
    signal to this process (`signals()` counts them) is passed on, so a second Ctrl-C
    makes the worker hand its running jobs back at once. Past STOP_GRACE, kill them."""
    _signal_all(children)
    passed_on = signals()
    deadline = time.monotonic() + STOP_GRACE
    while any(child.poll() is None for child in children.values()):
        if time.monotonic() > deadline:
            for child in children.values():
                if child.poll() is None:
                    child.kill()
                    child.wait()
            return
        if signals() > passed_on:
            passed_on = signals()
            _signal_all(children)
        time.sleep(0.05)


def run(config: DevConfig, echo: Callable[[str], None]) -> int:
    """Run the dev stack until SIGINT/SIGTERM or a child dies; returns the exit code."""
    from broker.migrate import upgrade

    settings = Settings.from_env()
    check_port_free(config.host, config.port)
    url, stop_database = _database(settings)
    children: Children = {}
    received = 0

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal received
        received += 1

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        upgrade(url, settings.schema)
        env = {
            # Unknown BROKER_* names were reported once, by `broker`; the children ignore them.
            **{k: v for k, v in os.environ.items() if k not in dict(_env.unknown(os.environ))},
            "BROKER_DATABASE_URL": url,
            "BROKER_API_TOKENS": os.environ.get("BROKER_API_TOKENS")
            or config.token
            or dev_token(settings.home),
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
            process_group=0,
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
            process_group=0,
        )
        base = f"http://{config.host}:{config.port}"
        _wait_ready(base, children)
        echo(f"pg-broker is running: API {base} (docs {base}/schema)")
        echo(f"database: {url}")
        echo(f"dev token: {token}")
        echo(f"dashboard: {base}/ui (sign in with the dev token)")
        echo("enqueue a job:")
        echo(
            f"  curl -s -X POST {base}/v1/jobs -H 'Authorization: Bearer {token}'"
            " -H 'Content-Type: application/json'"
            ' -d \'{"kind": "hello", "args": {"name": "you"}}\''
        )
        echo('then look at it (ID is the "id" in the answer):')
        echo(f"  curl -s {base}/v1/jobs/ID -H 'Authorization: Bearer {token}'")
        echo("Ctrl-C stops everything.")
        while not received:
            if problem := _exited(children):
                echo(f"error: {problem}; stopping")
                return 1
            time.sleep(0.2)
        echo("stopping: running jobs finish first (Ctrl-C again hands them back now)...")
        return 0
    finally:
        _stop(children, lambda: received)
        stop_database()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
