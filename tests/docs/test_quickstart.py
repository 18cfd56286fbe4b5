"""docs/quickstart.md works as written: its "your own PostgreSQL" and "your own task"
sections are followed command by command (`broker dev` itself is covered by
tests/acceptance/test_dev.py), up to the quickstart's own task succeeding.

The bash blocks are interpreted, not handed to bash, because the test must wait where
a person would (for the API to come up, for the job to finish) and must use a free port:
`export K=V` sets the environment (BROKER_DATABASE_URL becomes the test's database),
`broker ... &` starts a background job, `kill %N` stops one, `curl` and other `broker`
commands run to completion and must succeed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg

DOC = Path(__file__).resolve().parents[2] / "docs" / "quickstart.md"
FENCE = re.compile(r"```(\w+)\n(.*?)```", flags=re.DOTALL)
DOC_PORT = "8000"
TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def section(title: str) -> str:
    text = DOC.read_text()
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def blocks(text: str, language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(text) if lang == language]


def commands(block: str) -> list[str]:
    return [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


class Shell:
    """Runs quickstart command lines the way the doc means them, in `cwd`."""

    def __init__(self, cwd: Path, env: dict[str, str], db_url: str, port: int) -> None:
        self.cwd = cwd
        self.env = env
        self.db_url = db_url
        self.port = str(port)
        self.jobs: list[subprocess.Popen[str]] = []
        self.log = cwd / "background.log"

    def argv(self, line: str) -> list[str]:
        words = shlex.split(line.replace(DOC_PORT, self.port))
        assert words[0] == "broker", line
        return [sys.executable, "-m", "broker.cli", *words[1:]]

    def run(self, line: str) -> str:
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").partition("=")
            self.env[name] = self.db_url if name == "BROKER_DATABASE_URL" else value
            return ""
        if line.startswith("kill %"):
            for ref in line.split()[1:]:
                self.stop(self.jobs[int(ref.removeprefix("%")) - 1])
            return ""
        if line.endswith("&"):
            with self.log.open("a") as out:
                self.jobs.append(
                    subprocess.Popen(
                        self.argv(line[:-1]),
                        cwd=self.cwd,
                        env=self.env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        text=True,
                    )
                )
            return ""
        if line.startswith("curl "):
            self.wait_ready()
            argv = shlex.split(line.replace(f"localhost:{DOC_PORT}", f"127.0.0.1:{self.port}"))
        else:
            argv = self.argv(line)
        done = subprocess.run(
            argv, cwd=self.cwd, env=self.env, capture_output=True, text=True, timeout=TIMEOUT
        )
        assert done.returncode == 0, f"{line}: {done.stderr}\n{self.background_output()}"
        return done.stdout

    def wait_ready(self) -> None:
        deadline = time.monotonic() + TIMEOUT
        url = f"http://127.0.0.1:{self.port}/readyz"
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"the API never became ready\n{self.background_output()}")

    def background_output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    @staticmethod
    def stop(proc: subprocess.Popen[str]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        for proc in self.jobs:
            self.stop(proc)


def wait_for_state(db_url: str, job_id: int, state: str) -> dict[str, object]:
    deadline = time.monotonic() + TIMEOUT
    with psycopg.connect(db_url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT state, result FROM broker.jobs WHERE id = %s", (job_id,)
            ).fetchone()
            if row is not None and row[0] == state:
                return {"state": row[0], "result": row[1]}
            time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not reach {state}: {row}")


def test_quickstart_own_postgres_and_own_task(tmp_path: Path, db_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env["BROKER_HOME"] = str(tmp_path / "home")
    # Worker identity lives in the user's state directory: this test's own, not the
    # machine's (other sessions run workers with the same seq).
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    shell = Shell(tmp_path, env, db_url, free_port())
    try:
        # 3. The same with your own PostgreSQL
        setup, requests = blocks(section("3. The same with your own PostgreSQL"), "bash")
        for line in commands(setup):
            shell.run(line)
        post, get = commands(requests)
        created = json.loads(shell.run(post))
        assert created["kind"] == "hello" and created["id"] == 1
        assert wait_for_state(db_url, 1, "succeeded")["result"] == {"greeting": "hello, you"}
        assert json.loads(shell.run(get))["state"] == "succeeded"

        # 4. Write your own task: the module from the doc, imported by name with --tasks.
        own = section("4. Write your own task")
        [module] = blocks(own, "python")
        filename = module.splitlines()[0].removeprefix("# ").strip()
        (tmp_path / filename).write_text(module)
        [steps] = blocks(own, "bash")
        lines = commands(steps)
        assert any(f"--tasks {Path(filename).stem}" in line for line in lines)
        outputs = [shell.run(line) for line in lines[:-1]]
        job_id = int(outputs[-1].strip())  # `broker enqueue` prints the id
        assert lines[-1].startswith(f"broker jobs show {job_id}")
        job = wait_for_state(db_url, job_id, "succeeded")
        assert job["result"] == {"sum": 5}
        shown = shell.run(lines[-1])
        assert "succeeded" in shown and "adding 2 and 3 (attempt 1)" in shown
    finally:
        shell.close()
    # Workers drain and exit 0 on SIGTERM; uvicorn re-raises the signal once it has shut
    # down cleanly, so the API ends "killed by SIGTERM".
    codes = {" ".join(map(str, p.args)): p.returncode for p in shell.jobs}
    for command, code in codes.items():
        expected = {0} if " worker " in command else {0, -signal.SIGTERM}
        assert code in expected, f"{command}: exit {code}\n{shell.background_output()}"
