"""The pieces a worker process is built from, checked in-process: the task registry and
the identity (host id file, one-process-per-id lock)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from broker import ConfigError, Settings, task
from broker.task import get_task
from broker.worker import registry


def test_task_registration_reads_the_handler() -> None:
    @task("reg_sync", queue="q1", max_attempts=3, timeout=2.5)
    def sync_handler(ctx: object, x: int) -> int:
        return x

    @task
    async def async_handler() -> None:
        return None

    entry = get_task("reg_sync")
    assert entry is not None
    assert (entry.queue, entry.max_attempts, entry.timeout) == ("q1", 3, 2.5)
    assert (entry.is_async, entry.wants_ctx) == (False, True)
    default = get_task(f"{__name__}.{async_handler.__qualname__}")
    assert default is not None and default.is_async and not default.wants_ctx
    # Decorating returns the function itself: handlers stay callable in tests.
    assert sync_handler(None, 4) == 4


def test_a_kind_belongs_to_one_function() -> None:
    @task("reg_taken")
    def first() -> None: ...

    with pytest.raises(ConfigError, match="already registered"):

        @task("reg_taken")
        def second() -> None: ...


@pytest.mark.parametrize("options", [{"max_attempts": 0}, {"timeout": 0}])
def test_task_options_are_validated(options: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        task("reg_invalid", **options)(lambda: None)  # type: ignore[arg-type]


def test_host_id_is_created_once_and_kept(tmp_path: Path) -> None:
    first = registry.load_host_id(tmp_path / "state")
    assert registry.load_host_id(tmp_path / "state") == first
    assert uuid.UUID((tmp_path / "state" / "host_id").read_text().strip()) == first
    assert registry.worker_id_for(first, 2) == f"{first}:2"


def test_state_dir_defaults_to_the_users_not_the_working_directorys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert registry.state_dir(Settings(home=tmp_path)) == tmp_path / "xdg" / "pg-broker"
    assert registry.state_dir(Settings(home=Path("elsewhere"))) == tmp_path / "xdg" / "pg-broker"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    expected = tmp_path / "user" / ".local" / "state" / "pg-broker"
    assert registry.state_dir(Settings(home=tmp_path)) == expected
    assert registry.state_dir(Settings(home=tmp_path, state_dir=tmp_path / "s")) == tmp_path / "s"


def test_identity_lock_admits_one_holder(tmp_path: Path) -> None:
    held = registry.IdentityLock(tmp_path, 1)
    held.acquire("h:1")
    try:
        with pytest.raises(registry.WorkerIdInUse, match="already in use"):
            registry.IdentityLock(tmp_path, 1).acquire("h:1")
        other = registry.IdentityLock(tmp_path, 2)
        other.acquire("h:2")
        other.release()
    finally:
        held.release()
    again = registry.IdentityLock(tmp_path, 1)
    again.acquire("h:1")
    again.release()
