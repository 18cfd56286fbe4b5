"""Loads the named runtime queries in broker/sql/*.sql into a name -> SQL mapping."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from typing import LiteralString

from psycopg import sql

from broker.config import validate_schema

# The schema's functions, views and triggers (DDL, not named queries): broker.migrate.
SCHEMA_FILE = "schema.sql"

_NAME = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


class QueryFileError(ValueError):
    """A .sql file is malformed: text before the first name, a duplicate or empty query."""


def parse(text: str, origin: str = "<string>") -> dict[str, str]:
    """Split `text` into queries at `-- name: x` headers. Comments stay in the query text."""
    parts = _NAME.split(text)
    preamble, rest = parts[0], parts[1:]
    if any(line.strip() and not line.lstrip().startswith("--") for line in preamble.splitlines()):
        raise QueryFileError(f"{origin}: SQL before the first '-- name:' header")
    queries: dict[str, str] = {}
    for name, body in zip(rest[::2], rest[1::2], strict=True):
        body = body.strip().rstrip(";").strip()
        if name in queries:
            raise QueryFileError(f"{origin}: query {name!r} defined twice")
        if not any(
            line.strip() and not line.lstrip().startswith("--") for line in body.splitlines()
        ):
            raise QueryFileError(f"{origin}: query {name!r} is empty")
        queries[name] = body
    return queries


@cache
def raw_queries() -> dict[str, str]:
    """Every named query of the package, before the schema is filled in."""
    found: dict[str, str] = {}
    for entry in sorted(resources.files("broker.sql").iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql") or entry.name == SCHEMA_FILE:
            continue
        for name, body in parse(entry.read_text(encoding="utf-8"), entry.name).items():
            if name in found:
                raise QueryFileError(f"{entry.name}: query {name!r} also defined in another file")
            found[name] = body
    return found


# Placeholders a query keeps when it is loaded, filled in by `_assemble`.
_PARTS = {part: sql.SQL("{" + part + "}") for part in ("choice", "each", "rows", "queue")}


@cache
def queries(schema: str) -> dict[str, LiteralString]:
    """Every named query with `{schema}` replaced by the quoted schema name, compacted."""
    ident = sql.Identifier(validate_schema(schema))
    rendered: dict[str, LiteralString] = {}
    for name, body in raw_queries().items():
        # The bodies come from the package's own .sql files, never from user input.
        text: LiteralString = sql.SQL(body).format(schema=ident, **_PARTS).as_string()
        rendered[name] = compact(text)
    _assemble(rendered)
    return rendered


def compact(text: LiteralString) -> LiteralString:
    """`text` without its comment lines, blank lines and indentation (decision 029).

    psycopg parses a query's placeholders on every execution unless the query is at most
    4,096 bytes (its cache's limit), and the claim and the finish were 6,807 and 6,558
    with their comments: parsed anew, a tenth of a millisecond each time, on the event
    loop. Safe because no query has a string literal spanning lines (tests/unit/
    test_queries.py checks), so every line that starts with `--` is a comment.
    """
    lines = (line.strip() for line in text.splitlines())
    kept: LiteralString = "\n".join(line for line in lines if line and not line.startswith("--"))
    return kept


def _assemble(rendered: dict[str, LiteralString]) -> None:
    """Fill in the claim's candidates (decision 027): job_claim takes job_claim_each, and
    job_claim_many, the same statement, job_claim_merged with job_claim_each as its
    fallback; and the single enqueues' shared rows. Only the package's own text is
    joined here."""
    frame, each = rendered["job_claim"], rendered["job_claim_each"]
    merged = rendered["job_claim_merged"].replace("{each}", each)
    rendered["job_claim"] = frame.replace("{choice}", each)
    rendered["job_claim_many"] = frame.replace("{choice}", merged)
    # The single enqueue's rows (decision 024): in the named queue, or the declared one.
    rows = rendered["job_enqueue_one_rows"]
    for name, queue in (
        ("job_enqueue_one", "%(queue)s::text"),
        ("job_enqueue_one_routed", "coalesce((SELECT d.queues[1] FROM declared d), 'default')"),
    ):
        rendered[name] = rendered[name].replace("{rows}", rows.replace("{queue}", queue))
