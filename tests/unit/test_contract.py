"""broker.spec, the one enqueue contract: its annotations (what decoders check) and
JobSpec.validate() (what Python-built specs get) agree at every bound, the SQL migration
holds the same numbers, and text or JSON the database cannot store is refused."""

from __future__ import annotations

import importlib.util
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgspec
import pytest

from broker import InvalidJobError, JobSpec
from broker import spec as contract

ROOT = Path(__file__).resolve().parents[2]


def _bounds() -> list[tuple[str, Any, Any]]:
    """(field, lowest, highest) for every numeric field, read from JobSpec's annotations."""
    found = []
    for field in msgspec.inspect.type_info(JobSpec).fields:  # type: ignore[attr-defined]
        info = field.type
        if isinstance(info, msgspec.inspect.UnionType):
            info = next(t for t in info.types if not isinstance(t, msgspec.inspect.NoneType))
        if isinstance(info, msgspec.inspect.Metadata):
            info = info.type
        if isinstance(info, msgspec.inspect.IntType | msgspec.inspect.FloatType):
            lowest = info.ge if info.ge is not None else info.gt
            found.append((field.name, lowest, info.le))
    return found


def _decodes(fields: dict[str, Any]) -> bool:
    try:
        msgspec.convert({"kind": "k", **fields}, JobSpec)
    except msgspec.ValidationError:
        return False
    return True


def _validates(fields: dict[str, Any]) -> bool:
    try:
        JobSpec("k", **fields).validate()
    except InvalidJobError:
        return False
    return True


def test_every_numeric_bound_is_read_from_the_annotations() -> None:
    assert {name for name, _, _ in _bounds()} == {
        "priority",
        "delay",
        "max_attempts",
        "timeout",
        "start_within",
    }


@pytest.mark.parametrize(("field", "lowest", "highest"), _bounds())
def test_decoders_and_validate_agree_at_every_numeric_bound(
    field: str, lowest: Any, highest: Any
) -> None:
    step = 1 if isinstance(highest, int) and field in ("priority", "max_attempts") else 0.5
    for value in (lowest, highest, lowest - step, highest + step):
        if field == "timeout" and value <= 0:
            # Zero or less is the jobs_timeout_check constraint's, on every path alike.
            continue
        assert _decodes({field: value}) == _validates({field: value}), (field, value)


@pytest.mark.parametrize(
    ("field", "longest", "value"),
    [
        ("kind", contract.KIND_MAX_LENGTH, "k"),
        ("queue", contract.QUEUE_MAX_LENGTH, "q"),
        ("idempotency_key", contract.KEY_MAX_LENGTH, "i"),
        ("subject_key", contract.KEY_MAX_LENGTH, "s"),
        ("group", contract.GROUP_MAX_LENGTH, "g"),
        ("concurrency_key", contract.KEY_MAX_LENGTH, "c"),
    ],
)
def test_decoders_and_validate_agree_on_strings(field: str, longest: int, value: str) -> None:
    def fields(text: str) -> dict[str, Any]:
        return {"kind": text} if field == "kind" else {field: text}

    for text, ok in (
        (value * longest, True),
        (value * (longest + 1), False),
        ("", False),
        ("two words", False),
        ("nul\x00", False),
        ("é", False),
    ):
        spec = {"kind": "k", **fields(text)}
        try:
            msgspec.convert(spec, JobSpec)
            decoded = True
        except msgspec.ValidationError:
            decoded = False
        try:
            JobSpec(**spec).validate()
            validated = True
        except InvalidJobError:
            validated = False
        assert decoded == validated == ok, (field, text)


def test_tags_bounds_agree() -> None:
    cases: list[tuple[list[str], bool]] = [
        (["t"] * contract.MAX_TAGS, True),
        (["t"] * (contract.MAX_TAGS + 1), False),
        (["x" * contract.TAG_MAX_LENGTH], True),
        (["x" * (contract.TAG_MAX_LENGTH + 1)], False),
        ([""], False),
        (["a\x00"], False),
        (["tab\there"], False),
        (["naïve café"], True),
    ]
    for tags, ok in cases:
        assert _decodes({"tags": tags}) == _validates({"tags": tags}) == ok, tags


def test_depends_on_bounds_agree() -> None:
    most, top = contract.MAX_DEPENDENCIES, contract.JOB_ID_MAX
    cases: list[tuple[Any, bool]] = [
        (list(range(1, most + 1)), True),
        (list(range(1, most + 2)), False),
        ([top], True),
        ([top + 1], False),
        ([0], False),
        ([-3], False),
        ([True], False),
        ([1.5], False),
        (["1"], False),
        ([], True),
    ]
    for ids, ok in cases:
        assert _decodes({"depends_on": ids}) == _validates({"depends_on": ids}) == ok, ids


def test_deadline_rules() -> None:
    soon = datetime(2030, 1, 1, tzinfo=UTC)
    assert _validates({"deadline": soon}) and _decodes({"deadline": soon.isoformat()})
    assert not _validates({"deadline": soon, "start_within": 5})
    assert not _validates({"deadline": datetime(2030, 1, 1)})  # no offset
    assert not _validates({"start_within": -1}) and not _decodes({"start_within": -1})
    assert _validates({"start_within": timedelta(minutes=5)})
    wire = JobSpec("k", depends_on=[3, 1], start_within=timedelta(seconds=90)).to_json()
    assert wire["depends_on"] == [3, 1] and wire["start_within"] == 90.0


def test_migration_0009_holds_the_same_bounds() -> None:
    path = ROOT / "alembic" / "versions" / "0009_dependencies.py"
    module_spec = importlib.util.spec_from_file_location("migration_0009", path)
    assert module_spec is not None and module_spec.loader is not None
    migration = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(migration)
    for name in ("GROUP_MAX_LENGTH", "KEY_MAX_LENGTH", "MAX_DEPENDENCIES", "JOB_ID_MAX"):
        assert getattr(migration, name) == getattr(contract, name), name
    assert f"cardinality(r.depends_on) > {contract.MAX_DEPENDENCIES}" in migration.FUNCTIONS
    assert f"d NOT BETWEEN 1 AND {contract.JOB_ID_MAX}" in migration.FUNCTIONS
    assert contract.DEPENDS_ON_RULE in migration.FUNCTIONS


def test_migration_0012_holds_the_same_meta_bounds() -> None:
    path = ROOT / "alembic" / "versions" / "0012_keyed_queues.py"
    module_spec = importlib.util.spec_from_file_location("migration_0012", path)
    assert module_spec is not None and module_spec.loader is not None
    migration = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(migration)
    assert migration.MAX_META_DEPTH == contract.MAX_META_DEPTH
    assert migration.MAX_META_BYTES == contract.MAX_META_BYTES
    functions = migration.NEW_ENQUEUE_FUNCTIONS
    for rule in (contract.META_RULE, contract.META_DEPTH_RULE, contract.META_SIZE_RULE):
        assert f"'{rule}'" in functions, rule
    assert f"$.**{{{{{contract.MAX_META_DEPTH}}}}}" in functions
    assert f"octet_length(r.meta::text) > {contract.MAX_META_BYTES}" in functions


@pytest.mark.parametrize(
    "meta",
    [
        {},
        {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
        {"a": {"b": {"c": "d"}, "e": ""}, "f": "g"},
        {'quote"': "back\\slash", "ctl": "\n\t\r\b\f\x01\x1f\x7f", "é": "🚀"},
    ],
)
def test_meta_size_is_the_length_jsonb_prints(meta: dict[str, Any]) -> None:
    # jsonb prints `{"k": "v", "o": {}}`, escaping as json.dumps does without ensure_ascii.
    printed = json.dumps(meta, ensure_ascii=False, separators=(", ", ": "))
    assert contract.check_meta(meta) == len(printed.encode())


def test_meta_rules() -> None:
    for bad in ([], "x", {"n": 1}, {"b": True}, {"z": None}, {"l": ["a"]}, {1: "a"}):
        with pytest.raises(InvalidJobError, match="meta"):
            JobSpec("k", meta=bad).validate()  # type: ignore[arg-type]
    deep: dict[str, Any] = {}
    for _ in range(contract.MAX_META_DEPTH - 1):
        deep = {"m": deep}
    JobSpec("k", meta=deep).validate()
    with pytest.raises(InvalidJobError, match="nest at most 8 deep"):
        JobSpec("k", meta={"m": deep}).validate()


def test_the_migration_holds_the_same_bounds() -> None:
    path = ROOT / "alembic" / "versions" / "0006_contract.py"
    module_spec = importlib.util.spec_from_file_location("migration_0006", path)
    assert module_spec is not None and module_spec.loader is not None
    migration = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(migration)
    for name in (
        "DEFAULT_MAX_ATTEMPTS",
        "MAX_ATTEMPTS_LIMIT",
        "MAX_DURATION_SECONDS",
        "KEY_MAX_LENGTH",
        "SCOPE_MAX_LENGTH",
        "TAG_MAX_LENGTH",
        "MAX_TAGS",
        "MAX_JSON_DEPTH",
    ):
        assert getattr(migration, name) == getattr(contract, name), name
    assert datetime.fromisoformat(migration.RUN_AT_MIN) == contract.RUN_AT_MIN
    assert datetime.fromisoformat(migration.RUN_AT_MAX) == contract.RUN_AT_MAX


# --- run_at --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("run_at", "ok"),
    [
        (contract.RUN_AT_MIN, True),
        (contract.RUN_AT_MAX, True),
        (contract.RUN_AT_MIN - timedelta(microseconds=1), False),
        (datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC), False),
        (datetime(9999, 12, 30, 20, tzinfo=timezone(timedelta(hours=-5))), False),
        (datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1))), False),
        (datetime(2030, 1, 1), False),
    ],
)
def test_run_at_range(run_at: datetime, ok: bool) -> None:
    assert _validates({"run_at": run_at}) == ok


def test_run_at_travels_in_utc() -> None:
    when = datetime(2030, 1, 1, 12, tzinfo=timezone(timedelta(hours=-5)))
    assert JobSpec("k", run_at=when).to_json()["run_at"] == datetime(2030, 1, 1, 17, tzinfo=UTC)


# --- JSON the database can store -------------------------------------------------------------


def nested(depth: int) -> dict[str, Any]:
    """An object `depth` deep, counting itself."""
    value: Any = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return dict(value)


def test_depth_limit_counts_the_value_itself() -> None:
    assert contract.encode_json(nested(contract.MAX_JSON_DEPTH), "args")
    with pytest.raises(InvalidJobError, match="args must nest at most 64 deep"):
        contract.encode_json(nested(contract.MAX_JSON_DEPTH + 1), "args")
    with pytest.raises(InvalidJobError, match="result must nest at most 64 deep"):
        contract.encode_json([nested(contract.MAX_JSON_DEPTH)], "result")


def test_deeper_than_the_encoder_can_go_is_the_same_refusal() -> None:
    value: Any = []
    for _ in range(5000):
        value = [value]
    with pytest.raises(InvalidJobError, match="must nest at most 64 deep"):
        JobSpec("k", {"deep": value}).validate()


def test_many_brackets_that_do_not_nest_are_fine() -> None:
    wide = {"items": [{"n": n, "tags": [n]} for n in range(1000)]}
    assert json.loads(contract.encode_json(wide, "args")) == wide


@pytest.mark.parametrize(
    "args",
    [{"a": "\x00"}, {"a\x00": 1}, {"a": ["x", {"b": "c\x00d"}]}],
    ids=["value", "key", "nested"],
)
def test_nul_anywhere_in_args_is_refused(args: dict[str, Any]) -> None:
    with pytest.raises(InvalidJobError, match=r"args must not contain NUL \(\\u0000\)"):
        JobSpec("k", args).validate()


def test_an_escaped_backslash_before_u0000_is_not_a_nul() -> None:
    for text in ("\\u0000", "\\\\u0000", "a\\u0000b"):
        assert json.loads(contract.encode_json({"t": text}, "args")) == {"t": text}
    with pytest.raises(InvalidJobError, match="NUL"):
        contract.encode_json({"t": "\\\x00"}, "args")


@pytest.mark.parametrize("args", [{"a": "\ud800"}, {"\udfff": 1}], ids=["value", "key"])
def test_lone_surrogates_are_refused(args: dict[str, Any]) -> None:
    with pytest.raises(InvalidJobError, match="lone surrogates"):
        JobSpec("k", args).validate()


def test_text_checks() -> None:
    contract.check_text("plain, and ünïcode", "error")
    for bad, why in (("a\x00b", "NUL"), ("\ud83d", "surrogates")):
        with pytest.raises(InvalidJobError, match=why):
            contract.check_text(bad, "error")
    assert contract.storable_text("a\x00b\ud800c") == "a\\x00b\\ud800c"
    assert contract.storable_text("fine é") == "fine é"


def test_load_json_reads_what_it_can_and_marks_the_rest() -> None:
    assert contract.load_json(b'{"a": [1, 2]}') == {"a": [1, 2]}
    limit = contract.MAX_READ_DEPTH
    assert contract.load_json(b"[" * limit + b"]" * limit) == nested_list(limit)
    # Past the limit the verdict is the broker's, not the decoder's: the same on 3.11 (whose
    # decoder stops near 1,000 levels) and 3.13 (near 10,000), and below both.
    for depth in (limit + 1, 2_000, 50_000):
        unreadable = contract.load_json(b"[" * depth + b"]" * depth)
        assert isinstance(unreadable, contract.UnreadableJSON), depth
        assert f"deeper than {limit}" in unreadable["unreadable"]
    assert msgspec.json.decode(msgspec.json.encode(unreadable)) == dict(unreadable)
    # Brackets inside strings are not nesting.
    assert contract.load_json(b'["' + b"[" * 2_000 + b'"]') == ["[" * 2_000]


def nested_list(depth: int) -> list[Any]:
    """A list `depth` deep, counting itself, built without recursion."""
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_scope() -> None:
    contract.check_scope("0123abcd.token_1-x")
    for bad in ("", "a:b", "x" * (contract.SCOPE_MAX_LENGTH + 1), "with space"):
        with pytest.raises(InvalidJobError, match="idempotency_scope"):
            contract.check_scope(bad)


@pytest.mark.parametrize(
    ("value", "depth"),
    [
        ({}, 1),
        ({"a": [1, [2]]}, 3),
        ("[[[", 0),
        ({"a": 'x"[['}, 1),
        ({"a": "\\", "b": ["]]"]}, 2),
        ({"a": '\\"[[[[', "b": []}, 2),
        ([[[[]]]], 4),
        ([{}, [[]], {"a": [{}]}], 4),
        (["][", [["]"], "["]], 3),
        ([["]"] * 40], 2),
    ],
)
def test_nesting_is_measured_outside_strings(value: Any, depth: int) -> None:
    assert contract._nesting(msgspec.json.encode(value), contract.MAX_JSON_DEPTH) == depth


def test_brackets_in_strings_cannot_hide_depth() -> None:
    # Strings of lone brackets between the levels: counted, they would pair up with the
    # real ones and make 80 levels look like 1.
    text = b'["]",' * 80 + b"1" + b"]" * 80
    assert contract._nesting(text, contract.MAX_JSON_DEPTH) == contract.MAX_JSON_DEPTH + 1
