"""What every /ui handler shares: who is looking (the session), rendering, CSRF, scopes,
security headers and HTML error pages."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment
from litestar import Request, Response
from litestar.datastructures import Cookie
from litestar.exceptions import PermissionDeniedException
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Template
from litestar.response.file import ASGIFileResponse

from api import problems
from api.auth import ANONYMOUS, Authenticator, Principal
from api.deps import runtime_of
from api.strict import job_id_is_a_number
from api.ui import session as sessions

# Self only: every script, style and image comes from this app; nothing may frame it.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "object-src 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}
LOGIN_PATH = "/ui/login"
# Handlers with this in `opt` are reachable without a session (sign-in, static files).
PUBLIC = {"ui_public": True}

# Flash messages after an action: the redirect names one by code (never free text).
NOTICES = {
    "retried": "The job is queued again.",
    "cancelled": "The job is cancelled.",
    "cancel-requested": "Cancellation requested: the worker stops the job.",
    "paused": "The queue is paused: no new claims from it; running jobs finish.",
    "resumed": "The queue is resumed.",
    "triggered": "The schedule's job is enqueued (job {n}).",
    "schedule-paused": "The schedule is paused.",
    "schedule-resumed": "The schedule is resumed.",
    "bulk-retried": "{n} job(s) queued again.",
    "bulk-cancelled": "{n} job(s) cancelled or asked to stop.",
    "signed-out": "Signed out.",
}


@dataclass
class Viewer:
    """The signed-in principal of a /ui request, its session and what it may do."""

    principal: Principal
    session: sessions.Session
    key: bytes
    auth_disabled: bool
    new_cookie: str | None = None

    @property
    def csrf(self) -> str:
        return sessions.csrf_token(self.key, self.session)

    def may(self, scope: str) -> bool:
        """Whether the token grants `scope` (admin grants every scope)."""
        return scope in self.principal.scopes or "admin" in self.principal.scopes

    def require(self, scope: str) -> None:
        """Raise PermissionDeniedException (403) unless the token grants `scope`."""
        if not self.may(scope):
            raise PermissionDeniedException(f"this token lacks the {scope!r} scope")


def key_of(request: Request[Any, Any, Any]) -> bytes:
    return sessions.signing_key(runtime_of(request).api)


def viewer(request: Request[Any, Any, Any]) -> Viewer:
    """The Viewer the session hook stored on this request."""
    found: Viewer = request.state.ui_viewer
    return found


def _resolve(request: Request[Any, Any, Any]) -> Viewer | None:
    auth: Authenticator = request.app.state.authenticator
    key = key_of(request)
    now = time.time()
    current = sessions.read(key, request.cookies.get(sessions.COOKIE_NAME), now)
    if auth.disabled:
        # The UI is open, but actions still need a CSRF token, which needs a session.
        if current is not None:
            return Viewer(ANONYMOUS, current, key, True)
        fresh, cookie = sessions.issue(key, ANONYMOUS.token_id, now)
        return Viewer(ANONYMOUS, fresh, key, True, new_cookie=cookie)
    if current is None:
        return None
    who = auth.lookup(current.token_id)
    return None if who is None else Viewer(who, current, key, False)


async def require_session(request: Request[Any, Any, Any]) -> Response[Any] | None:
    """before_request hook: store the Viewer, or send a request without a live session
    to the sign-in page (303)."""
    if request.method == "POST" and request.headers.get("sec-fetch-site") == "cross-site":
        # Defence in depth under the CSRF token (and for the sign-in form, which has none):
        # a browser says when another site sent the form.
        raise PermissionDeniedException("a form from another site cannot act here")
    if request.route_handler.opt.get("ui_public"):
        return None
    found = _resolve(request)
    if found is None and request.headers.get("hx-request"):
        # A background refresh whose session ended: htmx loads the sign-in page.
        return security_headers(Response(b"", status_code=200, headers={"HX-Redirect": LOGIN_PATH}))
    if found is None:
        response: Response[Any] = Redirect(LOGIN_PATH, status_code=303)
        if sessions.COOKIE_NAME in request.cookies:
            response.delete_cookie(sessions.COOKIE_NAME, path=sessions.COOKIE_PATH)
        return security_headers(response)
    request.state.ui_viewer = found
    # As /v1/jobs does (a router-level hook replaces a handler's, so it is called here).
    await job_id_is_a_number(request)
    return None


def security_headers(response: Response[Any]) -> Response[Any]:
    """after_request hook: CSP (self only) and friends on every /ui response."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    # Pages show live state and the session's CSRF token: never stored. Static files are
    # revalidated (their ETag makes that a 304).
    static = isinstance(response, ASGIFileResponse)
    response.headers.setdefault("Cache-Control", "no-cache" if static else "no-store")
    return response


def session_cookie(request: Request[Any, Any, Any], value: str) -> Cookie:
    """The session cookie: HttpOnly, SameSite=Strict, Secure on https, scoped to /ui."""
    return Cookie(
        key=sessions.COOKIE_NAME,
        value=value,
        path=sessions.COOKIE_PATH,
        max_age=sessions.SESSION_TTL_SECONDS,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def render(
    request: Request[Any, Any, Any],
    name: str,
    context: Mapping[str, Any],
    status_code: int = 200,
) -> Template:
    """Render template `name` with the page context every template expects."""
    found: Viewer | None = getattr(request.state, "ui_viewer", None)
    notice_code = request.query_params.get("notice")
    notice = None
    if notice_code in NOTICES:
        n = request.query_params.get("n", "")
        notice = NOTICES[notice_code].format(n=n if n.isdigit() else "?")
    cookies = [session_cookie(request, found.new_cookie)] if found and found.new_cookie else []
    return Template(
        template_name=name,
        context={"viewer": found, "notice": notice, "path": request.url.path, **context},
        status_code=status_code,
        cookies=cookies,
    )


async def checked_form(request: Request[Any, Any, Any]) -> dict[str, str]:
    """The posted form, after checking its CSRF token. Raises PermissionDeniedException
    (403) when the token is missing or wrong."""
    form = await request.form()
    found = viewer(request)
    if not sessions.csrf_valid(found.key, found.session, form.get("csrf")):
        raise PermissionDeniedException(
            "the form's CSRF token is missing or does not match this session; reload the page"
        )
    return {k: v for k, v in form.items() if isinstance(v, str)}


def see_other(path: str, **query: object) -> Redirect:
    """303 to `path` with `query` (None values left out)."""
    given = {k: str(v) for k, v in query.items() if v is not None and v != ""}
    return Redirect(path + ("?" + urlencode(given) if given else ""), status_code=303)


def error_page(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """Exception handler for /ui: the problem the API would answer (same status, same
    sanitized detail), shown as a page."""
    handlers = problems.exception_handlers()
    handler = next(handlers[c] for c in type(exc).__mro__ if c in handlers)
    answer = handler(request, exc)
    body = answer.content
    found = getattr(body, "status", None)
    status: int = found if isinstance(found, int) else (answer.status_code or 500)
    detail = str(getattr(body, "detail", HTTPStatus(status).phrase))
    page = render(
        request,
        "error.html",
        {"status": status, "title": HTTPStatus(status).phrase, "detail": detail},
        status_code=status,
    )
    page.headers.update({k: v for k, v in (answer.headers or {}).items()})
    # Responses made by exception handlers skip after_request.
    security_headers(page)
    return page


# --- template filters ---------------------------------------------------------------------


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = float(seconds)
    sign = "-" if seconds < 0 else ""
    s = abs(seconds)
    if s < 60:
        return f"{sign}{s:.1f}s"
    if s < 3600:
        return f"{sign}{int(s // 60)}m {int(s % 60)}s"
    if s < 86400:
        return f"{sign}{int(s // 3600)}h {int(s % 3600 // 60)}m"
    return f"{sign}{int(s // 86400)}d {int(s % 86400 // 3600)}h"


def _when(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") + "Z"


def _duration(value: timedelta | None) -> str:
    return "-" if value is None else _age(value.total_seconds())


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def _query(params: Mapping[str, Any], **changes: object) -> str:
    merged = {k: v for k, v in params.items() if v not in (None, "")}
    merged.update({k: v for k, v in changes.items()})
    return urlencode({k: str(v) for k, v in merged.items() if v not in (None, "")})


def add_filters(engine: JinjaTemplateEngine) -> None:
    """engine_callback: the filters the templates use. Autoescape stays on (Litestar's
    Jinja environment sets it); no filter returns markup."""
    env: Environment = engine.engine
    env.autoescape = True
    env.filters.update(age=_age, when=_when, duration=_duration, pretty=_pretty, query=_query)
