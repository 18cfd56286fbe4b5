"""Schemathesis hooks for tests/api/test_live.py (loaded through SCHEMATHESIS_HOOKS): any
generated JSON body or query may carry NUL, lone surrogates and deep nesting. The schema's
strings and objects allow them, but schemathesis would rarely or never generate them."""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import strategies as st

HOSTILE_TEXT = ("\x00", "nul\x00inside", "\ud800", "lone \udfff", "\udc80\x00")
# Far past the API's limit (64), within what the client's json.dumps can still write.
DEEP = 300


def _deep() -> Any:
    value: Any = "bottom"
    for _ in range(DEEP):
        value = [value]
    return value


def _with_text(value: Any, text: str) -> Any:
    """`value` with every string, object key included, replaced by `text` + itself."""
    if isinstance(value, str):
        return text + value
    if isinstance(value, list):
        return [_with_text(v, text) for v in value]
    if isinstance(value, dict):
        return {_with_text(k, text): _with_text(v, text) for k, v in value.items()}
    return value


@schemathesis.hook
def flatmap_body(ctx: Any, body: Any) -> st.SearchStrategy[Any]:
    if not isinstance(body, dict):
        return st.just(body)
    text = [_with_text(body, t) for t in HOSTILE_TEXT]
    deep = [{**body, name: _deep()} for name in body]
    deep += [{**body, name: {"deep": _deep()}} for name in ("args", "result") if name in body]
    # A third of the bodies as generated, a third with hostile text, a third nested deep.
    return st.one_of(st.just(body), st.sampled_from(text), st.sampled_from(deep or [body]))


@schemathesis.hook
def flatmap_query(ctx: Any, query: Any) -> st.SearchStrategy[Any]:
    if not isinstance(query, dict) or not query:
        return st.just(query)
    # Surrogates cannot be percent-encoded as UTF-8 by the client; NUL can.
    return st.sampled_from([query, {k: f"{v}\x00" for k, v in query.items()}])


# GET /v1/jobs/{id}?wait= holds a request open until the job ends or the wait does (60 s
# at most, and no worker runs here): a valid wait is shortened to keep the run short.
# Out-of-range and malformed waits are sent as generated; tests/api/test_wait.py tests
# the bounds themselves.
SHORT_WAIT = 0.2


@schemathesis.hook
def before_call(ctx: Any, case: Any, kwargs: Any) -> None:
    query = case.query
    if not isinstance(query, dict) or "wait" not in query:
        return
    try:
        seconds = float(query["wait"])
    except (TypeError, ValueError):
        return
    if SHORT_WAIT < seconds <= 60:
        query["wait"] = SHORT_WAIT
