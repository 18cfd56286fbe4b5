"""broker.testing: the helpers applications use to test their own tasks."""

from __future__ import annotations

import pytest

import broker.examples.tasks  # noqa: F401  (registers the example tasks)
from broker import Broker
from broker.task import Retry
from broker.testing import assert_enqueued, refute_enqueued, run_inline


def test_assert_and_refute_enqueued(broker: Broker) -> None:
    broker.enqueue("hello", {"name": "ada", "lang": "en"}, queue="greetings")
    broker.enqueue("hello", {"name": "bob"})

    [job] = assert_enqueued(broker, "hello", args={"name": "ada"})
    assert job.queue == "greetings"
    assert len(assert_enqueued(broker, "hello", count=2)) == 2
    refute_enqueued(broker, "hello", args={"name": "eve"})
    refute_enqueued(broker, "sleep")

    with pytest.raises(AssertionError, match="no queued hello jobs"):
        assert_enqueued(broker, "hello", args={"name": "eve"})
    with pytest.raises(AssertionError, match="expected 3 hello jobs, found 2"):
        assert_enqueued(broker, "hello", count=3)
    with pytest.raises(AssertionError, match="unexpected hello jobs"):
        refute_enqueued(broker, "hello", args={"name": "bob"})

    broker.cancel(job.id)
    refute_enqueued(broker, "hello", args={"name": "ada"})
    assert_enqueued(broker, "hello", args={"name": "ada"}, state="cancelled")


def test_run_inline_calls_the_handler_with_context() -> None:
    run = run_inline("hello", {"name": "ada"})
    assert run.result == {"greeting": "hello, ada"}
    assert run.logs == ["greeting ada (attempt 1)"]
    assert run_inline("sleep", {"seconds": 0}).result == {"slept": 0}


def test_run_inline_propagates_retry_and_unknown_kinds() -> None:
    with pytest.raises(Retry):
        run_inline("fail_once")
    assert run_inline("fail_once", attempt=2).result == "succeeded on attempt 2"
    with pytest.raises(LookupError, match="no task registered"):
        run_inline("nope")
