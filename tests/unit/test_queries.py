"""The named-query loader: how .sql files split into queries, and that every query the lease
state machine names exists and is rendered for the configured schema."""

from __future__ import annotations

import ast
import inspect
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from broker import lease
from broker._queries import QueryFileError, compact, parse, queries, raw_queries
from broker.config import DEFAULT_SCHEMA
from broker.errors import ConfigError


def test_parse_splits_at_headers_and_keeps_comments() -> None:
    text = (
        "-- File comment before the first header is allowed.\n"
        "\n"
        "-- name: first_query\n"
        "-- Why this query exists.\n"
        "SELECT 1;\n"
        "\n"
        "-- name: second\n"
        "SELECT 2\n"
        "FROM t;\n"
    )
    parsed = parse(text)
    assert list(parsed) == ["first_query", "second"]
    assert parsed["first_query"] == "-- Why this query exists.\nSELECT 1"
    assert parsed["second"] == "SELECT 2\nFROM t"


def test_parse_accepts_loose_header_spacing() -> None:
    assert parse("--name:a\nSELECT 1\n--   name:   b  \nSELECT 2") == {
        "a": "SELECT 1",
        "b": "SELECT 2",
    }


def test_parse_of_only_comments_is_empty() -> None:
    assert parse("-- nothing here yet\n\n") == {}


def test_parse_rejects_sql_before_first_header() -> None:
    with pytest.raises(QueryFileError, match=r"jobs\.sql: SQL before the first"):
        parse("SELECT 0;\n-- name: a\nSELECT 1", "jobs.sql")


def test_parse_rejects_duplicate_names() -> None:
    with pytest.raises(QueryFileError, match="'a' defined twice"):
        parse("-- name: a\nSELECT 1\n-- name: a\nSELECT 2")


@pytest.mark.parametrize(
    "body",
    ["", "\n\n", ";\n", "-- only a comment\n", "-- name: b\nSELECT 1"],
    ids=["nothing", "blank-lines", "semicolon", "comment", "header-right-after"],
)
def test_parse_rejects_empty_queries(body: str) -> None:
    with pytest.raises(QueryFileError, match="'a' is empty"):
        parse("-- name: a\n" + body)


def test_header_names_must_be_lowercase_identifiers() -> None:
    # "-- name: Bad-Name" is not a header, so its text counts as SQL before the first one.
    with pytest.raises(QueryFileError, match="before the first"):
        parse("-- name: Bad-Name\nSELECT 1\nSELECT 2")


def _statement_names_in_lease_source() -> set[str]:
    """Every query name passed to a `Statement(...)` in broker/lease.py."""
    tree = ast.parse(inspect.getsource(lease))
    names: set[str] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "Statement"
        ):
            first = node.args[0]
            # A name, or a choice between two names (the claim: one queue or several).
            options = [first.body, first.orelse] if isinstance(first, ast.IfExp) else [first]
            for option in options:
                assert isinstance(option, ast.Constant) and isinstance(option.value, str)
                names.add(option.value)
    return names


def test_lease_source_names_are_found() -> None:
    # Guards the AST walk above: if it found nothing, the next test would prove nothing.
    names = _statement_names_in_lease_source()
    assert {"job_claim", "job_finish_many", "job_reap", "job_enqueue_many"} <= names


def test_every_statement_name_in_lease_exists() -> None:
    missing = _statement_names_in_lease_source() - set(queries(DEFAULT_SCHEMA))
    assert not missing, f"lease.py names queries that no .sql file defines: {missing}"


def test_every_query_looked_up_by_name_in_broker_exists() -> None:
    # Some paths (COPY) look queries up directly, e.g. q["job_copy_jobs"], not via Statement.
    package = Path(inspect.getfile(lease)).parent
    used: set[str] = set()
    for source in package.rglob("*.py"):
        used |= set(
            re.findall(r"\b(?:q|_queries|queries)\[\"([a-z_][a-z0-9_]*)\"\]", source.read_text())
        )
    missing = used - set(queries(DEFAULT_SCHEMA))
    assert not missing, f"broker/ looks up queries no .sql file defines: {missing}"


def _one_of_each_statement() -> list[lease.Statement[Any]]:
    held = lease.Lease(1, 1, "default", "k", {}, 0, 1, 3, None, "w:1")
    return [
        lease.enqueue_many([lease.JobSpec("k")]),
        lease.claim(["default"], 1, "w:1", 5.0),
        lease.heartbeat([held], 5.0),
        lease.heartbeat_unwritten([held], 5.0),
        lease.finish([lease.completed(held)], "broker_jobs"),
        lease.finish([lease.failed(held, lease.Failure("boom"))], "broker_jobs"),
        lease.finish([lease.cancel_acked(held, "cancelled")], "broker_jobs"),
        lease.finish([lease.released(held)], "broker_jobs"),
        lease.finish([lease.snoozed(held, 5.0)], "broker_jobs"),
        lease.append_logs([(held, "line")]),
        lease.reap(),
        lease.expire(),
        lease.cancel(1),
        lease.retry(1),
        lease.cancel_many([1, 2]),
        lease.retry_many([1, 2]),
        lease.get_jobs([1]),
        lease.finished_among([1]),
        lease.wait_register([1], 5.0),
        lease.wait_unregister([1]),
        lease.wait_settled([1]),
        lease.events(1),
        lease.logs(1),
        lease.db_clock(),
    ]


def test_every_constructor_names_an_existing_query() -> None:
    statements = [*_one_of_each_statement(), lease.claim(["a", "b"], 1, "w:1", 5.0)]
    names = {stmt.query for stmt in statements}
    assert names <= set(queries(DEFAULT_SCHEMA))
    # Each constructor found by the source scan is exercised here too.
    assert names == _statement_names_in_lease_source()


def test_statement_params_match_query_placeholders() -> None:
    rendered = queries(DEFAULT_SCHEMA)
    for stmt in [*_one_of_each_statement(), lease.claim(["a", "b", "c"], 5, "w:1", 5.0)]:
        placeholders = set(re.findall(r"%\((\w+)\)s", rendered[stmt.query]))
        assert placeholders == set(stmt.params), stmt.query


def test_the_claim_of_several_queues_is_its_own_statement() -> None:
    assert lease.claim(["a"], 10, "w:1", 5.0).query == "job_claim"
    assert lease.claim(["a", "a"], 10, "w:1", 5.0).query == "job_claim"
    assert lease.claim([], 10, "w:1", 5.0).query == "job_claim"
    assert lease.claim(["a", "b", "a"], 10, "w:1", 5.0).query == "job_claim_many"


def test_the_claims_are_assembled_from_their_parts() -> None:
    rendered = queries("jobsq")
    one, many = rendered["job_claim"], rendered["job_claim_many"]
    for text in (one, many):
        assert not re.search(r"\{(choice|each|schema)\}", text)
    each = rendered["job_claim_each"]
    # One queue: the LATERAL that takes up to the LIMIT per queue; several: the unlocked
    # share, then the locks, then the same LATERAL as the fallback of an empty result.
    assert each in one and "share" not in one.split("claimed AS")[0]
    assert each in many and "share AS" in many and "fallback" in many
    assert one.count("FOR NO KEY UPDATE SKIP LOCKED") == 1
    assert many.count("FOR NO KEY UPDATE SKIP LOCKED") == 2
    # Everything after the candidates is the same statement.
    assert one.split("claimed AS")[1] == many.split("claimed AS")[1]


def test_schema_is_rendered_as_quoted_identifier() -> None:
    raw = raw_queries()
    assert "{schema}" in raw["job_claim"]
    rendered = queries("jobsq")
    for name, text in rendered.items():
        assert "{schema}" not in text, name
    assert '"jobsq".jobs' in rendered["job_claim"]
    assert '"broker".jobs' in queries("broker")["job_claim"]


def test_escaped_braces_survive_rendering() -> None:
    # jobs.sql writes a literal '{}' as '{{}}' because the bodies go through format().
    assert "'{{}}'::jsonb" in raw_queries()["job_finish_many"]
    assert "'{}'::jsonb" in queries("broker")["job_finish_many"]


@pytest.mark.parametrize(
    "bad", ["Broker", "1abc", "jobs-q", 'x"; drop schema broker; --', "", "a" * 64]
)
def test_bad_schema_name_is_rejected(bad: str) -> None:
    with pytest.raises(ConfigError, match="BROKER_SCHEMA"):
        queries(bad)


def test_jobspec_json_for_enqueue_statement_is_an_array() -> None:
    when = datetime(2030, 1, 1, tzinfo=UTC)
    stmt = lease.enqueue_many([lease.JobSpec("a", run_at=when), lease.JobSpec("b", delay=2)])
    assert stmt.query == "job_enqueue_many"
    payload = stmt.params["specs"]
    assert payload.startswith("[") and '"kind":"a"' in payload and '"delay":2.0' in payload


def _string_literals(text: str) -> list[str]:
    """The single-quoted literals of `text`, comments skipped; dollar-quote markers are
    passed over, so a DO block's body is read as SQL too."""
    found, i = [], 0
    while i < len(text):
        if text.startswith("--", i):
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
        elif text[i] == '"':
            i = text.index('"', i + 1) + 1
        elif text[i] == "'":
            end = text.index("'", i + 1)
            while text.startswith("''", end):  # a doubled quote is part of the literal
                end = text.index("'", end + 2)
            found.append(text[i : end + 1])
            i = end + 1
        else:
            i += 1
    return found


def test_no_string_literal_spans_lines() -> None:
    # What makes compacting safe: a line that starts with "--" is always a comment.
    for name, body in raw_queries().items():
        for literal in _string_literals(body):
            assert "\n" not in literal, (name, literal)
    assert _string_literals("SELECT 'it''s' -- the worker's\n, \"a'b\", '--'") == [
        "'it''s'",
        "'--'",
    ]


def test_rendered_queries_are_compacted() -> None:
    rendered = queries(DEFAULT_SCHEMA)
    for name, text in rendered.items():
        lines = text.splitlines()
        assert all(line == line.strip() and line for line in lines), name
        assert not any(line.startswith("--") for line in lines), name
    # psycopg caches the parse of a query of at most 4,096 bytes, and parses a longer one
    # on every execution (decision 029): the hot statements stay under that.
    for name in ("job_claim", "job_claim_many", "job_finish_many", "job_heartbeat_many"):
        assert len(rendered[name].encode()) <= 4096, name


def test_compact_drops_comment_lines_blank_lines_and_indentation_only() -> None:
    text = (
        "-- Why.\n"
        "WITH x AS (\n"
        "    -- an indented comment\n"
        "\n"
        "    SELECT '-- not a comment' AS a,  1 -- a trailing one stays\n"
        ")\n"
        "  SELECT * FROM x"
    )
    assert compact(text) == (
        "WITH x AS (\nSELECT '-- not a comment' AS a,  1 -- a trailing one stays\n)\n"
        "SELECT * FROM x"
    )
