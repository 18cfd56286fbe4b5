"""Generate docs/api.md, the REST API reference, from the app's OpenAPI schema.

    python docs/gen_api.py          # rewrite docs/api.md
    python docs/gen_api.py --check  # exit 1 if docs/api.md is out of date

The schema is built by `api.app.create_app` without a database (the app's lifespan never
runs) and with authentication disabled (tokens do not change the schema). The scope
each endpoint needs is read from its guards. tests/docs/test_docs_examples.py fails
when docs/api.md differs from what this script writes.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "docs" / "api.md"
METHODS = ("get", "post", "put", "patch", "delete")
TAG_ORDER = ("jobs", "worker protocol", "operations", "health")

# What each status means in this API (the schema only has the HTTP reason phrases).
STATUS_MEANING = {
    "200": "OK",
    "201": "created",
    "400": "malformed request: bad JSON, a wrong type, an unknown query value",
    "401": "no or unknown bearer token",
    "403": "the token lacks the scope this endpoint needs",
    "404": "no such job (or route)",
    "409": "the job's state does not allow this (cancel, retry), or the lease was lost "
    "(worker protocol: the write carried a stale `lease_epoch`)",
    "413": "request body over BROKER_API_MAX_BODY_BYTES",
    "415": "the request body is not `application/json`",
    "422": "a valid request the broker refuses: invalid job, idempotency key reused for a "
    "different request",
    "503": "the database is unreachable, or no connection was free in time",
}


def build_schema() -> tuple[dict[str, Any], dict[tuple[str, str], list[str]]]:
    """The OpenAPI schema as a dict, and the scopes required per (METHOD, path)."""
    sys.path.insert(0, str(ROOT))
    from litestar.routes import HTTPRoute

    from api.app import create_app
    from api.config import ApiSettings
    from broker.config import Settings

    app = create_app(Settings(), api_settings=ApiSettings(auth_disabled=True))
    schema: dict[str, Any] = app.openapi_schema.to_schema()
    scopes: dict[tuple[str, str], list[str]] = {}
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        path = re.sub(r"\{(\w+):[^}]+\}", r"{\1}", route.path)
        for handler in route.route_handlers:
            guards = [g for layer in handler.ownership_layers for g in layer.guards or ()]
            names = [getattr(g, "__name__", "") for g in guards]
            needed = sorted(n.removeprefix("require_") for n in names if n.startswith("require_"))
            for method in handler.http_methods:
                scopes[(method.upper(), path)] = needed
    return schema, scopes


def cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def type_of(schema: dict[str, Any]) -> str:
    """A short, readable type: `string`, `integer or null`, `array of JobOut`, a link."""
    if "$ref" in schema:
        name = ref_name(schema["$ref"])
        return f"[{name}](#{name.lower()})"
    if "oneOf" in schema or "anyOf" in schema:
        parts = [type_of(s) for s in schema.get("oneOf", schema.get("anyOf", []))]
        text = " or ".join(dict.fromkeys(parts))
    elif schema.get("type") == "array":
        text = f"array of {type_of(schema.get('items', {}))}"
    elif isinstance(schema.get("type"), list):
        text = " or ".join(t for t in schema["type"] if t != "null")
        if "null" in schema["type"]:
            text += " or null"
    else:
        text = schema.get("type", "any")
        if schema.get("format"):
            text += f" ({schema['format']})"
    return text


def constraints(schema: dict[str, Any]) -> str:
    found = []
    if "enum" in schema:
        found.append("one of " + ", ".join(f"`{v}`" for v in schema["enum"] if v is not None))
    for key, label in (
        ("minLength", "min length"),
        ("maxLength", "max length"),
        ("minimum", "min"),
        ("maximum", "max"),
        ("maxItems", "max items"),
        ("pattern", "pattern"),
    ):
        if key in schema:
            value = schema[key]
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            found.append(f"{label} `{value}`")
    if "default" in schema:
        found.append(f"default `{schema['default']}`")
    return "; ".join(found)


def operations(schema: dict[str, Any]) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(tag, METHOD, path, operation) in a stable reading order."""
    found = []
    for path, item in schema["paths"].items():
        for method in METHODS:
            if method in item:
                op = item[method]
                tag = (op.get("tags") or ["other"])[0]
                found.append((tag, method.upper(), path, op))

    def order(entry: tuple[str, str, str, dict[str, Any]]) -> tuple[int, str, int]:
        tag, method, path, _ = entry
        rank = TAG_ORDER.index(tag) if tag in TAG_ORDER else len(TAG_ORDER)
        return rank, path, METHODS.index(method.lower())

    return sorted(found, key=order)


def render_operation(
    method: str, path: str, op: dict[str, Any], scopes: dict[tuple[str, str], list[str]]
) -> list[str]:
    out = [f"### `{method} {path}`", "", f"**{op.get('summary', '')}**", ""]
    if op.get("description"):
        out += [op["description"], ""]
    needed = scopes.get((method, path), [])
    if op.get("security"):
        scope = " or ".join(f"`{s}`" for s in needed) if needed else "any"
        also = "" if needed == ["admin"] else " (or `admin`)"
        out += [f"Auth: bearer token with scope {scope}{also}.", ""]
    else:
        out += ["Auth: none.", ""]
    params = op.get("parameters", [])
    if params:
        out += [
            "| parameter | in | type | required | constraints |",
            "|---|---|---|---|---|",
        ]
        for p in params:
            out.append(
                f"| `{p['name']}` | {p['in']} | {cell(type_of(p.get('schema', {})))} | "
                f"{'yes' if p.get('required') else 'no'} | "
                f"{cell(constraints(p.get('schema', {})))} |"
            )
        out.append("")
    body = op.get("requestBody")
    if body:
        for media, content in body.get("content", {}).items():
            out += [f"Request body (`{media}`): {type_of(content.get('schema', {}))}", ""]
    out += ["| status | meaning | body |", "|---|---|---|"]
    for status, response in sorted(op.get("responses", {}).items()):
        bodies = [
            f"{type_of(content.get('schema', {}))} (`{media}`)"
            for media, content in response.get("content", {}).items()
        ]
        meaning = STATUS_MEANING.get(status, response.get("description", ""))
        out.append(f"| {status} | {cell(meaning)} | {cell(', '.join(bodies) or '-')} |")
    out.append("")
    return out


def render_schema(name: str, schema: dict[str, Any]) -> list[str]:
    out = [f"### {name}", ""]
    if schema.get("description"):
        out += [schema["description"], ""]
    props = schema.get("properties", {})
    if not props:
        return [*out, f"Type: {type_of(schema)}.", ""]
    required = set(schema.get("required", []))
    out += ["| field | type | required | constraints |", "|---|---|---|---|"]
    for field, prop in props.items():
        notes = "; ".join(filter(None, [constraints(prop), prop.get("description")]))
        out.append(
            f"| `{field}` | {cell(type_of(prop))} | {'yes' if field in required else 'no'} | "
            f"{cell(notes)} |"
        )
    out.append("")
    return out


def render() -> str:
    """The whole of docs/api.md."""
    schema, scopes = build_schema()
    info = schema["info"]
    ops = operations(schema)
    out = [
        "# REST API reference",
        "",
        "<!-- Generated by docs/gen_api.py from the OpenAPI schema; do not edit by hand. -->",
        "",
        f"{info['title']} {info['version']}. {info.get('description', '')}",
        "",
        "The running API serves the same schema as JSON at `/schema/openapi.json` and as",
        "interactive docs at `/schema` (Scalar) and `/schema/swagger` (Swagger UI), whose",
        "scripts the app serves itself from `/static/docs/` (pinned versions, no request to",
        "another host, so they work offline). Start it with `broker api`",
        "([quickstart](quickstart.md)); tokens come from `BROKER_API_TOKENS`",
        "(`token` for every scope, `token:submit+work` for some). Scopes: `submit`",
        "(enqueue and manage jobs), `work` (the worker protocol), `admin` (everything,",
        "including queues, workers, stats and metrics).",
        "",
        "Request bodies are JSON (`Content-Type: application/json`, else 415), decoded",
        "strictly: no string is read as a number, no number as a time, and an unknown field",
        "is refused. A job ([JobIn](#jobin)) has the same fields and bounds as everywhere else",
        "in pg-broker ([decision 008](decisions/008-job-contract.md)): no string may hold",
        "NUL (`\\u0000`) or a lone surrogate, and JSON values (args, results) nest at most",
        "64 deep. Job ids in paths are decimal digits, 1 to 2**53. A request the schema",
        "refuses is a 400; a job the broker refuses (the rules the schema cannot say,",
        "idempotency conflicts) a 422; no request is answered 5xx for what it contains.",
        "",
        "Every error is an RFC 9457 problem (`application/problem+json`, schema",
        "[Problem](#problem)). Status codes used below:",
        "",
        "| status | meaning |",
        "|---|---|",
        *(f"| {code} | {cell(text)} |" for code, text in STATUS_MEANING.items()),
        "",
        "## Endpoints",
        "",
        "| method | path | summary |",
        "|---|---|---|",
    ]
    for _, method, path, op in ops:
        anchor = re.sub(r"[^a-z0-9_ -]", "", f"{method} {path}".lower()).replace(" ", "-")
        out.append(f"| {method} | [`{path}`](#{anchor}) | {cell(op.get('summary', ''))} |")
    out.append("")
    current = None
    for tag, method, path, op in ops:
        if tag != current:
            out += [f"## {tag.capitalize()}", ""]
            current = tag
        out += render_operation(method, path, op, scopes)
    out += ["## Schemas", ""]
    for name, component in sorted(schema.get("components", {}).get("schemas", {}).items()):
        out += render_schema(name, component)
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            print(f"{OUTPUT} is out of date: run python docs/gen_api.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
