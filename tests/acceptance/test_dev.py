"""`broker dev` (the README's run command) brings up a working broker, and the curl it
prints enqueues a job that the example worker runs; Ctrl-C stops everything."""

from __future__ import annotations

import http.cookiejar
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

START_TIMEOUT = 90.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def read_until(proc: subprocess.Popen[str], marker: str, timeout: float) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        lines.append(line.rstrip("\n"))
        if marker in line:
            return lines
    raise AssertionError(f"no {marker!r} from broker dev; output so far: {lines}")


@pytest.fixture
def home() -> Iterator[Path]:
    """A BROKER_HOME outside pytest's temporary root: as root, pgserver runs PostgreSQL as
    the user `pgserver`, and a pytest session starting meanwhile makes that root 0700."""
    path = Path(tempfile.mkdtemp(prefix="broker-home-")) / "home"
    yield path
    shutil.rmtree(path.parent, ignore_errors=True)


QUICKSTART = Path(__file__).resolve().parents[2] / "docs" / "quickstart.md"


def assert_quickstart_shows(lines: list[str], token: str, port: int) -> None:
    """docs/quickstart.md's sample of the banner is the real one, but for the token, the
    port and the database (the doc's embedded one)."""
    text = QUICKSTART.read_text()
    start = text.index("```text\npg-broker is running") + len("```text\n")
    sample = text[start : text.index("```", start)].splitlines()
    doc_token = next(line.split()[-1] for line in sample if line.startswith("dev token:"))
    real = [line.replace(token, doc_token).replace(f":{port}", ":8000") for line in lines]
    banner = real[real.index(sample[0]) :]
    assert [line for line in banner if not line.startswith("database: ")] == [
        line for line in sample if not line.startswith("database: ")
    ]
    assert any(line.startswith("database: postgresql://") for line in banner)


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl to run the printed command")
def test_broker_dev_runs_a_job_from_the_printed_curl(
    tmp_path: Path, db_url: str, home: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env["BROKER_HOME"] = str(home)
    if os.environ.get("BROKER_TEST_DATABASE_URL"):
        env["BROKER_DATABASE_URL"] = db_url  # else: the embedded server, as on a fresh machine
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "broker.cli", "dev", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = read_until(proc, "Ctrl-C stops everything", START_TIMEOUT)
        token = next(line.split()[-1] for line in lines if line.startswith("dev token:"))
        assert_quickstart_shows(lines, token, port)
        curl = next(line.strip() for line in lines if line.strip().startswith("curl -s -X POST"))
        created = json.loads(
            subprocess.run(curl, shell=True, check=True, capture_output=True, text=True).stdout
        )
        assert created["kind"] == "hello"

        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/jobs/{created['id']}",
            headers={"Authorization": f"Bearer {token}"},
        )
        deadline = time.monotonic() + 30
        job = created
        while job["state"] != "succeeded" and time.monotonic() < deadline:
            time.sleep(0.2)
            with urllib.request.urlopen(request, timeout=5) as response:
                job = json.loads(response.read())
        assert job["state"] == "succeeded"
        assert job["result"] == {"greeting": "hello, you"}

        # The printed dashboard signs in with the dev token.
        dashboard = next(line.split()[1] for line in lines if line.startswith("dashboard:"))
        assert dashboard == f"http://127.0.0.1:{port}/ui"
        sign_in = urllib.request.Request(
            dashboard + "/login",
            data=urllib.parse.urlencode({"token": token}).encode(),
            method="POST",
        )
        browser = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )
        with browser.open(sign_in, timeout=5) as response:  # follows the 303, with the cookie
            assert response.url.endswith("/ui/")
            assert "<h1>Overview</h1>" in response.read().decode()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rest, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, rest
    assert "stopping" in rest
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "the API still listens after Ctrl-C"


def dev_env(home: Path, db_url: str) -> dict[str, str]:
    """A fresh shell's environment with BROKER_HOME, and the test's database when the
    suite has a server (else broker dev's embedded one, as on a fresh machine)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env["BROKER_HOME"] = str(home)
    if os.environ.get("BROKER_TEST_DATABASE_URL"):
        env["BROKER_DATABASE_URL"] = db_url
    return env


def start_dev(home: Path, db_url: str, port: int) -> tuple[subprocess.Popen[str], list[str]]:
    """`broker dev` in a session of its own, as a terminal runs it (a Ctrl-C there goes to
    the whole foreground process group: os.killpg here); its output up to the banner."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "broker.cli", "dev", "--port", str(port)],
        env=dev_env(home, db_url),
        cwd=home.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    return proc, read_until(proc, "Ctrl-C stops everything", START_TIMEOUT)


def api(port: int, token: str, path: str, body: dict[str, object] | None = None) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def wait_state(port: int, token: str, job_id: int, states: set[str], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = str(api(port, token, f"/v1/jobs/{job_id}")["state"])
        if state in states:
            return state
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} never reached {states}")


def ctrl_c(proc: subprocess.Popen[str]) -> None:
    os.killpg(proc.pid, signal.SIGINT)


def test_one_ctrl_c_drains_a_running_job_and_the_token_stays(db_url: str, home: Path) -> None:
    port = free_port()
    proc, lines = start_dev(home, db_url, port)
    token = next(line.split()[-1] for line in lines if line.startswith("dev token:"))
    assert (home / "dev-token").read_text().strip() == token
    assert (home / "dev-token").stat().st_mode & 0o777 == 0o600
    try:
        job = api(port, token, "/v1/jobs", {"kind": "sleep", "args": {"seconds": 2}})
        wait_state(port, token, job["id"], {"running"}, 30)
        ctrl_c(proc)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, rest
    assert "running jobs finish first" in rest
    assert "releasing running jobs now" not in rest

    # The next run answers to the same token, and shows the job the drain let finish.
    again, lines = start_dev(home, db_url, port)
    try:
        assert f"dev token: {token}" in lines
        done = api(port, token, f"/v1/jobs/{job['id']}")
        assert (done["state"], done["result"]) == ("succeeded", {"slept": 2})

        # A second Ctrl-C hands a running job back at once.
        long = api(port, token, "/v1/jobs", {"kind": "sleep", "args": {"seconds": 120}})
        wait_state(port, token, long["id"], {"running"}, 30)
        ctrl_c(again)
        time.sleep(1.0)
        assert again.poll() is None, "one Ctrl-C must wait for the running job"
        ctrl_c(again)
        rest, _ = again.communicate(timeout=30)
    finally:
        if again.poll() is None:
            again.kill()
    assert again.returncode == 0, rest
    assert "releasing running jobs now" in rest
    # broker dev stopped its embedded server: a one-shot command starts it to look.
    shown = subprocess.run(
        [sys.executable, "-m", "broker.cli", "jobs", "show", str(long["id"]), "--json"],
        env=dev_env(home, db_url),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(shown.stdout)["job"]["state"] == "queued", shown.stderr


def test_a_busy_port_is_one_error_line_and_no_banner(tmp_path: Path, db_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env["BROKER_HOME"] = str(tmp_path / "home")
    env["BROKER_DATABASE_URL"] = db_url
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "broker.cli", "dev", "--port", str(port)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use;"
        " stop what uses it or pass --port\n"
    )
