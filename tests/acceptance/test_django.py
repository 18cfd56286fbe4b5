"""Django tasks on pg-broker: the test project in tests/django_project enqueues through
broker.django.Backend, a real `python -m broker.worker --django` subprocess runs the tasks,
and get_result() reads them back. Runs on Django 6's django.tasks (Python 3.12+) and on the
django-tasks backport (Python 3.11); skipped only when neither is installed."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

try:
    import broker.django as broker_django
except ImportError:
    pytest.skip(
        "neither django.tasks (Django 6) nor the django-tasks backport is installed",
        allow_module_level=True,
    )

from broker import Broker
from broker.errors import InvalidJobError
from broker.types import JOB_STATES
from tests.conftest import create_database, drop_database

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = "tests.django_project.settings"
TASKS = "tests.django_project.shop.tasks"
RESULT_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def django_db(pg_server_url: str, template_db: str) -> Iterator[str]:
    """One migrated database for Django and pg-broker alike, Django set up on it."""
    name = f"{template_db}_django"
    url = create_database(pg_server_url, name, template=template_db)
    saved = {key: os.environ.get(key) for key in ("DJANGO_DATABASE_URL", "DJANGO_SETTINGS_MODULE")}
    os.environ["DJANGO_DATABASE_URL"] = url
    os.environ["DJANGO_SETTINGS_MODULE"] = SETTINGS
    import django
    from django.db import connections

    django.setup()
    try:
        yield url
    finally:
        connections.close_all()
        broker_django.close()
        drop_database(pg_server_url, name)
        # Django stays set up in this process; later tests' subprocesses need not know.
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def worker_env(url: str, state_dir: Path, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": SETTINGS,
        "DJANGO_DATABASE_URL": url,
        "PYTHONPATH": str(ROOT),
        "BROKER_STATE_DIR": str(state_dir),
        "BROKER_LOG_LEVEL": "INFO",
    }
    # The worker takes its database from the Django settings (broker.django.setup_worker).
    env.pop("BROKER_DATABASE_URL", None)
    env.pop("BROKER_TEST_DATABASE_URL", None)
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def worker(django_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A real `python -m broker.worker --django`, for the whole module; yields its log."""
    state = tmp_path_factory.mktemp("django-worker")
    log = state / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "broker.worker", "--django", "--concurrency", "4"],
            cwd=ROOT,
            env=worker_env(django_db, state, DJANGO_TEST_IMPORT_MARKER=str(state / "imported")),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            yield log
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
                raise
    assert code == 0, log.read_text()


def tasks() -> Any:
    import tests.django_project.shop.tasks as module

    return module


def finished(task: Any, result_id: str, log: Path | None = None) -> Any:
    """The task's result once it is SUCCESSFUL or FAILED."""
    deadline = time.monotonic() + RESULT_TIMEOUT
    while True:
        result = task.get_result(result_id)
        if result.is_finished:
            return result
        if time.monotonic() > deadline:
            extra = log.read_text() if log is not None else ""
            raise AssertionError(f"result {result_id} is still {result.status}\n{extra}")
        time.sleep(0.05)


def job_row(url: str, job_id: str) -> tuple[Any, ...] | None:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(
            "SELECT kind, args, queue, priority, run_at, state, max_attempts"
            " FROM broker.jobs WHERE id = %s",
            (int(job_id),),
        ).fetchone()


# --- the worker runs them -------------------------------------------------------------------


def test_a_sync_task_runs_on_the_worker(django_db: str, worker: Path) -> None:
    t = tasks()
    enqueued = t.add.enqueue(2, 3)
    assert enqueued.status == broker_django.TaskResultStatus.READY
    assert job_row(django_db, enqueued.id)[:4] == (  # type: ignore[index]
        f"{TASKS}.add",
        {"args": [2, 3], "kwargs": {}},
        "default",
        0,
    )
    result = finished(t.add, enqueued.id, worker)
    assert result.status == broker_django.TaskResultStatus.SUCCESSFUL
    assert result.return_value == 5
    assert result.args == [2, 3] and result.kwargs == {}
    assert result.attempts == 1 and result.worker_ids[0]
    assert result.errors == []
    assert result.enqueued_at <= result.started_at <= result.finished_at
    assert result.backend == "default"


def test_keyword_arguments_and_json_return_values(worker: Path) -> None:
    t = tasks()
    result = finished(t.greet, t.greet.enqueue("ada", punctuation="?").id, worker)
    assert result.return_value == {"greeting": "hello ada?"}
    assert result.kwargs == {"punctuation": "?"}


def test_an_async_task_is_awaited_by_the_worker(worker: Path) -> None:
    t = tasks()
    assert finished(t.double, t.double.enqueue(21).id, worker).return_value == 42


def test_a_failing_task_is_failed_with_its_exception(django_db: str, worker: Path) -> None:
    t = tasks()
    result = finished(t.charge, t.charge.enqueue("4242").id, worker)
    assert result.status == broker_django.TaskResultStatus.FAILED
    [error] = result.errors
    assert error.exception_class_path == f"{TASKS}.PaymentDeclined"
    assert error.exception_class is t.PaymentDeclined
    assert "card 4242 declined" in error.traceback
    assert 'in charge\n    raise PaymentDeclined(f"card {card} declined")' in error.traceback
    with pytest.raises(ValueError, match="failed"):
        result.return_value  # noqa: B018 (Django raises for a failed task's return value)
    # MAX_ATTEMPTS defaults to 1: Django's API has no retry policy.
    assert job_row(django_db, result.id)[5:] == ("failed", 1)  # type: ignore[index]


def test_a_backend_with_max_attempts_retries_and_keeps_each_error(worker: Path) -> None:
    t = tasks()
    result = finished(t.flaky, t.flaky.enqueue().id, worker)
    assert result.status == broker_django.TaskResultStatus.SUCCESSFUL
    assert result.return_value == 2  # the attempt its context saw
    assert result.attempts == 2 and len(result.worker_ids) == 2
    [error] = result.errors
    assert error.exception_class is RuntimeError
    assert "first attempt fails" in error.traceback


def test_a_task_that_takes_context_gets_its_running_result(worker: Path) -> None:
    t = tasks()
    enqueued = t.whoami.enqueue(note="hi")
    result = finished(t.whoami, enqueued.id, worker)
    assert result.return_value == {
        "attempt": 1,
        "id": enqueued.id,
        "status": "RUNNING",
        "note": "hi",
    }


def test_tasks_use_django_connections_on_the_worker(django_db: str, worker: Path) -> None:
    t = tasks()
    result = finished(t.database_name, t.database_name.enqueue().id, worker)
    assert result.return_value == psycopg.conninfo.conninfo_to_dict(django_db)["dbname"]


def test_aenqueue_and_aget_result(worker: Path) -> None:
    t = tasks()

    async def scenario() -> Any:
        enqueued = await t.add.aenqueue(40, 2)
        deadline = time.monotonic() + RESULT_TIMEOUT
        while time.monotonic() < deadline:
            result = await t.add.aget_result(enqueued.id)
            if result.is_finished:
                return result
            await asyncio.sleep(0.05)
        raise AssertionError(worker.read_text())

    result = asyncio.run(scenario())
    assert result.status == broker_django.TaskResultStatus.SUCCESSFUL
    assert result.return_value == 42


def test_a_kind_outside_the_installed_apps_is_not_imported(django_db: str, worker: Path) -> None:
    kind = "tests.django_project.sideeffect.run"
    with Broker.connect(django_db) as client:
        job = client.enqueue(kind, {"args": [], "kwargs": {}}, max_attempts=1)
        done = client.wait(job.id, RESULT_TIMEOUT)
    assert done.state == "failed", worker.read_text()
    assert f"no task registered for kind {kind!r}" in (done.last_error or "")
    assert not (worker.parent / "imported").exists()


# --- what an enqueue maps to ------------------------------------------------------------------


def test_queue_priority_and_run_after_map_to_the_job(django_db: str) -> None:
    t = tasks()
    declared = t.send_email.enqueue("a@example.com")
    assert job_row(django_db, declared.id)[2:4] == ("emails", 50)  # type: ignore[index]
    later = datetime.now(UTC) + timedelta(days=1)
    parked = t.send_email.using(queue_name="parked", priority=-100, run_after=later)
    result = parked.enqueue("b@example.com")
    kind, _, queue, priority, run_at, state, _ = job_row(django_db, result.id)  # type: ignore[misc]
    assert (kind, queue, priority, run_at, state) == (
        f"{TASKS}.send_email",
        "parked",
        -100,
        later,
        "queued",
    )
    read = t.send_email.get_result(result.id)
    assert read.status == broker_django.TaskResultStatus.READY
    assert (read.task.queue_name, read.task.priority) == ("parked", -100)


def test_a_higher_django_priority_is_claimed_first(django_db: str) -> None:
    # A queue no worker serves (the `deferred` backend accepts any queue).
    t = tasks()
    low = t.add.using(backend="deferred", queue_name="unserved", priority=-5).enqueue(1, 1)
    high = t.add.using(backend="deferred", queue_name="unserved", priority=5).enqueue(2, 2)
    with Broker.connect(django_db) as client:
        first, second = (client.claim(["unserved"], 1, "test:1")[0] for _ in range(2))
    assert [str(first.job_id), str(second.job_id)] == [high.id, low.id]


def test_django_validation_rules_hold(django_db: str) -> None:
    t = tasks()
    backend = t.add.get_backend()
    assert isinstance(backend, broker_django.Backend)
    assert backend.supports_defer and backend.supports_async_task
    assert backend.supports_get_result and backend.supports_priority
    with pytest.raises(broker_django.InvalidTask, match="priority"):
        t.add.using(priority=101)
    with pytest.raises(broker_django.InvalidTask, match="not valid"):
        t.add.using(queue_name="nowhere")
    # The broker's own rule for queue names, where Django accepts any queue.
    with pytest.raises(broker_django.InvalidTask, match="queue must be"):
        t.add.using(backend="deferred", queue_name="no spaces")
    with pytest.raises(broker_django.InvalidTask, match="aware"):
        t.add.using(run_after=datetime(2030, 1, 1))


def test_arguments_must_be_json_the_broker_can_store(django_db: str) -> None:
    t = tasks()
    before = job_count(django_db)
    with pytest.raises(InvalidJobError, match="JSON"):
        t.add.enqueue(datetime.now(UTC), 1)
    with pytest.raises(InvalidJobError, match="NUL"):
        t.greet.enqueue("a\x00b")
    with pytest.raises(InvalidJobError, match="nest at most"):
        nested: Any = []
        for _ in range(100):
            nested = [nested]
        t.add.enqueue(nested, 1)
    assert job_count(django_db) == before


def job_count(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM broker.jobs").fetchone()
        return int(row[0]) if row else 0


# --- transactions -------------------------------------------------------------------------


def test_enqueue_joins_the_callers_transaction(django_db: str) -> None:
    from django.db import connection, transaction

    t = tasks()
    with transaction.atomic():
        kept = t.add.enqueue(1, 2)
        # The INSERT ran on Django's connection: visible there, not yet anywhere else.
        with connection.cursor() as cur:
            cur.execute("SELECT state FROM broker.jobs WHERE id = %s", [int(kept.id)])
            assert cur.fetchone() == ("queued",)
        assert job_row(django_db, kept.id) is None
    assert job_row(django_db, kept.id) is not None

    class Abort(Exception):
        pass

    with pytest.raises(Abort), transaction.atomic():
        dropped = t.add.enqueue(3, 4)
        raise Abort
    assert job_row(django_db, dropped.id) is None
    with pytest.raises(broker_django.TaskResultDoesNotExist):
        t.add.get_result(dropped.id)


def test_refused_arguments_leave_the_transaction_usable(django_db: str) -> None:
    from django.db import connection, transaction

    t = tasks()
    with transaction.atomic():
        with pytest.raises(InvalidJobError):
            t.greet.enqueue("a\x00b")
        kept = t.add.enqueue(5, 6)
        with connection.cursor() as cur:
            cur.execute("SELECT 1")
    assert job_row(django_db, kept.id) is not None


def test_another_database_enqueues_on_commit(django_db: str) -> None:
    """The `deferred` backend follows the SQLite `aux` database's transactions: the id is
    reserved at once, the job inserted when `aux` commits, never when it rolls back."""
    from django.db import transaction

    deferred = tasks().add.using(backend="deferred", queue_name="unserved")
    with transaction.atomic(using="aux"):
        kept = deferred.enqueue(1, 1)
        assert kept.id.isdigit()
        assert job_row(django_db, kept.id) is None
    assert job_row(django_db, kept.id)[5] == "queued"  # type: ignore[index]
    assert deferred.get_result(kept.id).status == broker_django.TaskResultStatus.READY

    class Abort(Exception):
        pass

    with pytest.raises(Abort), transaction.atomic(using="aux"):
        dropped = deferred.enqueue(2, 2)
        raise Abort
    assert job_row(django_db, dropped.id) is None
    assert broker_django._joins[("aux", django_db)] is False


# --- reading results back -------------------------------------------------------------------


def test_a_cancelled_job_reads_failed_with_job_cancelled(django_db: str) -> None:
    t = tasks()
    later = datetime.now(UTC) + timedelta(days=1)
    result = t.add.using(run_after=later).enqueue(1, 2)
    with Broker.connect(django_db) as client:
        assert client.cancel(int(result.id)) == "cancelled"
    read = t.add.get_result(result.id)
    assert read.status == broker_django.TaskResultStatus.FAILED
    assert read.errors[-1].exception_class is broker_django.JobCancelled


def test_unknown_ids_and_foreign_jobs_do_not_exist(django_db: str) -> None:
    t = tasks()
    with Broker.connect(django_db) as client:
        plain = client.enqueue("email.send", {"to": "x"}, run_at=datetime(2100, 1, 1, tzinfo=UTC))
        os_job = client.enqueue("os.system", {}, run_at=datetime(2100, 1, 1, tzinfo=UTC))
    for result_id in ("nope", "0", "-1", "99999999", str(plain.id), str(os_job.id)):
        with pytest.raises(broker_django.TaskResultDoesNotExist):
            t.add.get_result(result_id)


def test_every_job_state_has_a_django_status() -> None:
    assert set(broker_django.STATUS) == set(JOB_STATES)
    assert broker_django.STATUS["cancelled"] == broker_django.TaskResultStatus.FAILED
    assert broker_django.STATUS["waiting"] == broker_django.TaskResultStatus.READY


@pytest.mark.parametrize(
    ("error", "path"),
    [
        (
            'Traceback (most recent call last):\n  File "t.py", line 1, in f\n    raise'
            " ValueError('a')\nValueError: a\nsecond line\n",
            "builtins.ValueError",
        ),
        (
            'Traceback (most recent call last):\n  File "t.py", line 1, in f\n    x()\n'
            "    ^^^\nmyapp.tasks.Declined: no\n",
            "myapp.tasks.Declined",
        ),
        (
            'Traceback (most recent call last):\n  File "t.py", line 1, in f\n    raise E\n'
            "KeyError\n",
            "builtins.KeyError",
        ),
        ("lease expired", None),
        ('Traceback (most recent call last):\n  File "t.py", line 1\nNotAClass: x\n', None),
    ],
)
def test_exception_path_reads_the_last_exception_of_a_traceback(
    error: str, path: str | None
) -> None:
    assert broker_django.exception_path(error) == path


def test_a_mistyped_option_is_named(django_db: str) -> None:
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured, match="unknown option DATABSE_URL"):
        broker_django.Backend("x", {"OPTIONS": {"DATABSE_URL": django_db}})
    with pytest.raises(ImproperlyConfigured, match="max_attempts"):
        broker_django.Backend("x", {"OPTIONS": {"MAX_ATTEMPTS": 0}})
    with pytest.raises(ImproperlyConfigured, match="DATABASE 'defualt' is not in DATABASES"):
        broker_django.Backend("x", {"OPTIONS": {"DATABASE": "defualt"}})
    with pytest.raises(ImproperlyConfigured, match="lower-case identifier"):
        broker_django.Backend("x", {"OPTIONS": {"SCHEMA": "Not-A-Schema"}})
    with pytest.raises(ImproperlyConfigured, match="POOL_SIZE"):
        broker_django.Backend("x", {"OPTIONS": {"POOL_SIZE": 0}})


def test_django_checks_report_a_backend_without_a_database(
    django_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.core.exceptions import ImproperlyConfigured

    monkeypatch.delenv("BROKER_DATABASE_URL", raising=False)
    backend = broker_django.Backend("nowhere", {"OPTIONS": {"DATABASE": "aux"}})
    [error] = backend.check()
    assert error.id == "broker.E001" and "BROKER_DATABASE_URL" in error.msg
    with pytest.raises(ImproperlyConfigured, match="no database for pg-broker"):
        backend.database_url()


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        (None, "settings are not configured"),
        ("tests.django_project.settings_without_broker", "no TASKS backend is broker.django"),
        ("tests.django_project.settings_bad_queue", "Queue 'emails' is not valid"),
    ],
)
def test_the_worker_says_in_one_line_when_django_is_not_configured(
    django_db: str, tmp_path: Path, settings: str | None, says: str
) -> None:
    env = worker_env(django_db, tmp_path)
    if settings is None:
        del env["DJANGO_SETTINGS_MODULE"]
    else:
        env["DJANGO_SETTINGS_MODULE"] = settings
    done = subprocess.run(
        [sys.executable, "-m", "broker.worker", "--django"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and errors[0].startswith("Error: --django: "), done.stderr
    assert says in errors[0]
