"""The UI's POST handlers: sign-in and sign-out, and every action (cancel, retry, pause,
resume, trigger, bulk). Each action checks the form's CSRF token, then the scope its /v1
endpoint needs, then makes the same broker call that endpoint makes."""

from __future__ import annotations

import time
from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.exceptions import ValidationException
from litestar.params import PathParameter
from litestar.response import Redirect, Template

from api.auth import Authenticator
from api.deps import BrokerClient
from api.schedules import schedule_name
from api.strict import JobId
from api.ui import session as sessions
from api.ui._web import PUBLIC, checked_form, key_of, render, see_other, session_cookie, viewer
from api.ui.pages import BULK_STATES, filter_params, job_filter
from broker import lease
from broker import queues as queue_settings
from broker import schedules as sch
from broker.lease import MAX_BULK_JOBS

PathName = Annotated[str, PathParameter(description="Queue or schedule name.")]
# How many characters of a posted id list are read at most (MAX_BULK_JOBS bigints).
_MAX_IDS_TEXT = MAX_BULK_JOBS * 20


class LoginController(Controller):
    path = "/"
    include_in_schema = False

    @get("/login", opt=PUBLIC)
    async def login_form(self, request: Request[Any, Any, Any]) -> Template:
        return render(request, "login.html", {"error": None})

    @post("/login", opt=PUBLIC, status_code=303)
    async def login(self, request: Request[Any, Any, Any]) -> Redirect | Template:
        """Sign in with an API token (form field `token`): a session cookie and 303 to /ui;
        a wrong token gets the form again with 401."""
        auth: Authenticator = request.app.state.authenticator
        if auth.disabled:
            return see_other("/ui/")
        form = await request.form()
        token = form.get("token")
        who = auth.check(token.strip()) if isinstance(token, str) and token.strip() else None
        if who is None:
            return render(
                request, "login.html", {"error": "That token is not valid here."}, status_code=401
            )
        _, cookie = sessions.issue(key_of(request), who.token_id, time.time())
        answer = see_other("/ui/")
        answer.cookies.append(session_cookie(request, cookie))
        return answer

    @post("/logout", status_code=303)
    async def logout(self, request: Request[Any, Any, Any]) -> Redirect:
        await checked_form(request)
        answer = see_other("/ui/login", notice="signed-out")
        answer.delete_cookie(sessions.COOKIE_NAME, path=sessions.COOKIE_PATH)
        return answer


class ActionsController(Controller):
    path = "/"
    include_in_schema = False

    @post("/jobs/{job_id:str}/cancel", status_code=303)
    async def cancel(
        self, request: Request[Any, Any, Any], job_id: JobId, client: BrokerClient
    ) -> Redirect:
        await checked_form(request)
        viewer(request).require("submit")  # as POST /v1/jobs/{id}/cancel
        state = await client.cancel(job_id)
        notice = "cancel-requested" if state == "running" else "cancelled"
        return see_other(f"/ui/jobs/{job_id}", notice=notice)

    @post("/jobs/{job_id:str}/retry", status_code=303)
    async def retry(
        self, request: Request[Any, Any, Any], job_id: JobId, client: BrokerClient
    ) -> Redirect:
        await checked_form(request)
        viewer(request).require("submit")  # as POST /v1/jobs/{id}/retry
        await client.retry(job_id)
        return see_other(f"/ui/jobs/{job_id}", notice="retried")

    @post("/jobs/bulk", status_code=303)
    async def bulk(self, request: Request[Any, Any, Any], client: BrokerClient) -> Redirect:
        """Cancel or retry the jobs the operator confirmed (ids listed by the confirmation
        page from the filter); each is checked again under its row lock."""
        form = await checked_form(request)
        viewer(request).require("admin")
        action = form.get("action")
        if action not in BULK_STATES:
            raise ValidationException("action must be cancel or retry")
        ids = _ids(form.get("ids", ""))
        back = filter_params(job_filter(form))  # checked before anything changes
        statement = lease.cancel_many(ids) if action == "cancel" else lease.retry_many(ids)
        done = await client.run(statement) if ids else []
        notice = "bulk-cancelled" if action == "cancel" else "bulk-retried"
        return see_other("/ui/jobs", **back, notice=notice, n=len(done))

    @post("/queues/{name:str}/pause", status_code=303)
    async def pause_queue(
        self, request: Request[Any, Any, Any], name: PathName, client: BrokerClient
    ) -> Redirect:
        await checked_form(request)
        viewer(request).require("admin")  # as POST /v1/queues/{name}/pause
        await client.run(queue_settings.pause(name, "paused from the UI"))
        return see_other("/ui/", notice="paused")

    @post("/queues/{name:str}/resume", status_code=303)
    async def resume_queue(
        self, request: Request[Any, Any, Any], name: PathName, client: BrokerClient
    ) -> Redirect:
        await checked_form(request)
        viewer(request).require("admin")  # as POST /v1/queues/{name}/resume
        await client.run(queue_settings.resume(name))
        return see_other("/ui/", notice="resumed")

    @post("/schedules/{name:str}/trigger", status_code=303)
    async def trigger(
        self, request: Request[Any, Any, Any], name: PathName, client: BrokerClient
    ) -> Redirect:
        await checked_form(request)
        viewer(request).require("admin")  # as POST /v1/schedules/{name}/trigger
        job_id = await client.run(sch.trigger(schedule_name(name)))
        return see_other("/ui/schedules", notice="triggered", n=job_id)

    @post("/schedules/{name:str}/pause", status_code=303)
    async def pause_schedule(
        self, request: Request[Any, Any, Any], name: PathName, client: BrokerClient
    ) -> Redirect:
        await checked_form(request)
        viewer(request).require("admin")
        await client.run(sch.pause(schedule_name(name)))
        return see_other("/ui/schedules", notice="schedule-paused")

    @post("/schedules/{name:str}/resume", status_code=303)
    async def resume_schedule(
        self, request: Request[Any, Any, Any], name: PathName, client: BrokerClient
    ) -> Redirect:
        await checked_form(request)
        viewer(request).require("admin")
        await client.run(sch.resume(schedule_name(name)))
        return see_other("/ui/schedules", notice="schedule-resumed")


def _ids(text: str) -> list[int]:
    """The posted comma-separated job ids. Raises ValidationException (400)."""
    if len(text) > _MAX_IDS_TEXT:
        raise ValidationException(f"a bulk action takes at most {MAX_BULK_JOBS} jobs")
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not all(p.isascii() and p.isdigit() and len(p) <= 19 for p in parts):
        raise ValidationException("ids must be comma-separated job ids")
    ids = sorted({int(p) for p in parts})
    if len(ids) > MAX_BULK_JOBS:
        raise ValidationException(f"a bulk action takes at most {MAX_BULK_JOBS} jobs")
    return ids
