"""The routing rule's warnings, from what the registry said about one placement."""

from __future__ import annotations

from broker.routing import Placement, placement_warnings, resolve


def placement(**changes: object) -> Placement:
    base: dict[str, object] = {
        "kind": "ok",
        "queue": "default",
        "routed": True,
        "declared": (),
        "queue_served": False,
        "kind_served": False,
        "served_on": (),
    }
    return Placement(**{**base, **changes})  # type: ignore[arg-type]


def test_a_served_placement_has_no_warning() -> None:
    assert placement_warnings(placement(queue_served=True, kind_served=True)) == ()


def test_an_unserved_queue_names_where_the_kind_is_served() -> None:
    assert placement_warnings(placement(served_on=("nc", "x"))) == (
        "no live worker serves queue 'default' (kind 'ok' is served on 'nc', 'x')",
    )
    assert placement_warnings(placement()) == ("no live worker serves queue 'default'",)


def test_a_served_queue_whose_workers_lack_the_kind() -> None:
    assert placement_warnings(placement(queue_served=True, served_on=("default", "nc"))) == (
        "no live worker on queue 'default' runs kind 'ok' (kind 'ok' is served on 'nc')",
    )


def test_disagreement_is_reported_only_when_the_registry_chose() -> None:
    split = {"queue": "a", "declared": ("a", "b"), "queue_served": True, "kind_served": True}
    assert placement_warnings(placement(**split)) == (
        "live workers declare kind 'ok' on different queues ('a', 'b'); it went to 'a'",
    )
    assert placement_warnings(placement(**split, routed=False)) == ()


def test_a_named_queue_wins_and_an_unknown_kind_is_left_to_the_registry() -> None:
    assert resolve("routing.unit.nobody", "q") == "q"
    assert resolve("routing.unit.nobody", None) is None
