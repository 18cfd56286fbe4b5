"""broker.task's finders: asked for a kind nothing registered, in order, and only then."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from broker.task import Task, _finders, add_finder, get_task, task


@pytest.fixture(autouse=True)
def no_extra_finders() -> Iterator[None]:
    before = list(_finders)
    yield
    _finders[:] = before


def test_a_finder_is_asked_only_for_kinds_nothing_registered() -> None:
    @task("tests.unit.finder.registered")
    def registered() -> None: ...

    asked: list[str] = []

    def finder(kind: str) -> Task | None:
        asked.append(kind)
        return Task(kind=kind, fn=registered) if kind.endswith(".found") else None

    add_finder(finder)
    add_finder(finder)  # once is enough
    assert get_task("tests.unit.finder.registered").fn is registered  # type: ignore[union-attr]
    assert get_task("tests.unit.finder.missing") is None
    found = get_task("tests.unit.finder.found")
    assert found is not None and found.kind == "tests.unit.finder.found"
    assert asked == ["tests.unit.finder.missing", "tests.unit.finder.found"]


def test_finders_are_asked_in_order_until_one_finds() -> None:
    def first(kind: str) -> Task | None:
        return Task(kind=kind, fn=print, queue="first") if kind == "tests.unit.finder.a" else None

    def second(kind: str) -> Task | None:
        return Task(kind=kind, fn=print, queue="second")

    add_finder(first)
    add_finder(second)
    assert get_task("tests.unit.finder.a").queue == "first"  # type: ignore[union-attr]
    assert get_task("tests.unit.finder.b").queue == "second"  # type: ignore[union-attr]
