"""compose.yaml and the Dockerfile agree with the code: services, dependency conditions,
commands the CLI really has, and only BROKER_* variables the code reads. (Docker cannot
run here, so the files are checked by parsing them.)"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from alembic.config import Config
from alembic.script import ScriptDirectory

from broker.cli import main
from broker.pruner import DEFAULT_RETENTION
from broker.worker.command import worker as worker_command

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [ROOT / "broker", ROOT / "api", ROOT / "alembic"]
DEFAULT_SHUTDOWN_GRACE = 30.0


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return loaded


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, rest) per Dockerfile instruction, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def exec_form(rest: str) -> list[str]:
    value = json.loads(rest)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), rest
    return value


def argv(value: str | list[str]) -> list[str]:
    return shlex.split(value) if isinstance(value, str) else list(value)


def check_broker_command(args: list[str]) -> None:
    """Parse `broker ARGS` as the CLI would, without running it; fails on anything unknown."""
    assert args, "empty command"
    ctx = main.make_context("broker", list(args))
    with ctx:
        # The group itself takes no options here, so the command is the first word.
        name, command, rest = main.resolve_command(ctx, list(args))
        assert command is not None, args
        if name == "worker":
            # `broker worker` hands its arguments to the worker's own command.
            worker_command.make_context("broker worker", rest, parent=ctx).close()
        else:
            command.make_context(name, rest, parent=ctx).close()


def check_alembic_command(args: list[str]) -> None:
    assert args == ["upgrade", "head"], args
    config = Config(str(ROOT / "alembic.ini"))
    assert ScriptDirectory.from_config(config).get_current_head() is not None


def env_names_read_by_code() -> set[str]:
    names: set[str] = set()
    for source in SOURCES:
        for path in source.rglob("*.py"):
            names |= set(re.findall(r"BROKER_[A-Z0-9_]*[A-Z0-9]", path.read_text()))
    # Read as f"BROKER_RETENTION_{state.upper()}" in broker/pruner.py.
    names |= {f"BROKER_RETENTION_{state.upper()}" for state in DEFAULT_RETENTION}
    return names


def service_commands(compose: dict[str, Any]) -> dict[str, list[str]]:
    """Each broker-image service's full argv (entrypoint + command, image defaults applied)."""
    instructions = dockerfile()
    entrypoint = exec_form(next(r for i, r in instructions if i == "ENTRYPOINT"))
    cmd = exec_form(next(r for i, r in instructions if i == "CMD"))
    found = {}
    for name, service in compose["services"].items():
        if "build" not in service:
            continue
        if "entrypoint" in service:
            found[name] = argv(service["entrypoint"]) + argv(service.get("command", []))
        else:
            found[name] = entrypoint + argv(service.get("command", cmd))
    return found


def test_services_and_dependencies(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "migrate", "api", "worker"}
    postgres = services["postgres"]
    assert postgres["image"].startswith("postgres:16")
    test = argv(postgres["healthcheck"]["test"])
    assert test[:2] == ["CMD", "pg_isready"], test
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert services["migrate"].get("restart") in (None, "no")
    for name in ("api", "worker"):
        assert services[name]["depends_on"] == {
            "migrate": {"condition": "service_completed_successfully"}
        }, name
        assert services[name]["build"] == "."
    assert services["migrate"]["build"] == "."


def test_every_broker_service_shares_the_database_url(compose: dict[str, Any]) -> None:
    postgres = compose["services"]["postgres"]["environment"]
    expected = (
        f"postgresql://{postgres['POSTGRES_USER']}:{postgres['POSTGRES_PASSWORD']}"
        f"@postgres:5432/{postgres['POSTGRES_DB']}"
    )
    for name in ("migrate", "api", "worker"):
        env = compose["services"][name]["environment"]
        assert env["BROKER_DATABASE_URL"] == expected, name


def test_commands_are_real(compose: dict[str, Any]) -> None:
    commands = service_commands(compose)
    assert commands["migrate"][0] == "alembic"
    check_alembic_command(commands["migrate"][1:])
    assert commands["api"][:4] == ["broker", "api", "--host", "0.0.0.0"]
    assert commands["worker"][:4] == ["broker", "worker", "--tasks", "broker.examples.tasks"]
    for name in ("api", "worker"):
        check_broker_command(commands[name][1:])


def test_command_checker_rejects_unknown_commands() -> None:
    for bad in (["apii"], ["api", "--hots", "x"], ["worker", "--taks", "x"], []):
        with pytest.raises((click.ClickException, AssertionError)):
            check_broker_command(bad)


def test_dockerfile_entrypoint_and_cmd() -> None:
    instructions = dockerfile()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    entrypoint = exec_form(next(r for i, r in instructions if i == "ENTRYPOINT"))
    assert entrypoint == ["broker"]
    check_broker_command(exec_form(next(r for i, r in instructions if i == "CMD")))
    user = [r for i, r in instructions if i == "USER"]
    assert user and user[-1] not in ("root", "0"), "the image must not run as root"
    installs = [r for i, r in instructions if i == "RUN" and "pip install" in r]
    assert installs and all("embedded" not in r and "[dev]" not in r for r in installs)
    copied = " ".join(r for i, r in instructions if i == "COPY")
    for needed in ("pyproject.toml", "README.md", "alembic.ini", "alembic", "broker", "api"):
        assert needed in copied, f"the image needs {needed}"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert not {"alembic", "alembic.ini", "broker", "api", "README.md"} & set(ignored)


def test_environment_uses_only_variables_the_code_reads(compose: dict[str, Any]) -> None:
    known = env_names_read_by_code()
    set_here: set[str] = set()
    for service in compose["services"].values():
        set_here |= {n for n in service.get("environment", {}) if n.startswith("BROKER_")}
    for instruction, rest in dockerfile():
        if instruction == "ENV":
            set_here |= set(re.findall(r"\b(BROKER_[A-Z0-9_]+)=", rest))
    assert set_here, "no BROKER_* variables set"
    assert set_here <= known, f"not read anywhere in the code: {sorted(set_here - known)}"


def test_api_token_comes_from_the_environment_with_a_dev_default(
    compose: dict[str, Any],
) -> None:
    tokens = compose["services"]["api"]["environment"]["BROKER_API_TOKENS"]
    match = re.fullmatch(r"\$\{BROKER_API_TOKENS:-([^}]+)\}", tokens)
    assert match, tokens
    comments = [line for line in (ROOT / "compose.yaml").read_text().splitlines() if "#" in line]
    assert any(f"`{match.group(1)}`" in line for line in comments), "document the default"


def test_worker_gets_its_shutdown_grace(compose: dict[str, Any]) -> None:
    grace = compose["services"]["worker"]["stop_grace_period"]
    assert float(grace.rstrip("s")) > DEFAULT_SHUTDOWN_GRACE
    option = next(p for p in worker_command.params if p.name == "shutdown_grace")
    assert option.default == DEFAULT_SHUTDOWN_GRACE


def test_api_port_is_published_and_health_checked(compose: dict[str, Any]) -> None:
    api = compose["services"]["api"]
    command = argv(api["command"])
    port = command[command.index("--port") + 1]
    assert f"{port}:{port}" in api["ports"]
    assert f"127.0.0.1:{port}/readyz" in " ".join(argv(api["healthcheck"]["test"]))
