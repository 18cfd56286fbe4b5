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
import time
import urllib.parse
import urllib.request
from pathlib import Path

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


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl to run the printed command")
def test_broker_dev_runs_a_job_from_the_printed_curl(tmp_path: Path, db_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env["BROKER_HOME"] = str(tmp_path / "home")
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
