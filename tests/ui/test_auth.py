"""/ui sign-in, sessions, CSRF and scopes, over HTTP against the real app and database."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from api.config import ApiSettings, parse_tokens
from api.ui import session as sessions
from broker import Broker
from broker import inspection as views
from tests.ui.conftest import ADMIN, SUBMIT, TOKENS, WORK, UiClient, csrf_of, sign_in

PAGES = ["/ui", "/ui/jobs", "/ui/jobs/1", "/ui/workers", "/ui/schedules", "/ui/groups"]


@pytest.mark.parametrize("path", [*PAGES, "/ui/jobs/1/log", "/ui/jobs/bulk?action=retry"])
def test_without_a_session_pages_answer_303_to_the_sign_in_page(
    client: UiClient, path: str
) -> None:
    answer = client.get(path, follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/ui/login"


def test_without_a_session_an_action_is_sent_to_sign_in_and_changes_nothing(
    client: UiClient, broker: Broker
) -> None:
    job = broker.enqueue("k")
    answer = client.post(f"/ui/jobs/{job.id}/cancel", data={}, follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/ui/login"
    assert broker.get_job(job.id).state == "queued"


def test_sign_in_sets_a_signed_httponly_samesite_strict_cookie(client: UiClient) -> None:
    form = client.get("/ui/login")
    assert form.status_code == 200
    assert 'name="token"' in form.text
    answer = client.post("/ui/login", data={"token": ADMIN}, follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/ui/"
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith("broker_ui_session=")
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "samesite", "path", "max-age"} <= attributes
    assert "samesite=strict" in cookie.lower()
    assert "path=/ui" in cookie.lower()
    assert "secure" not in attributes  # plain http (the test client)
    assert ADMIN not in cookie
    assert client.get("/ui", follow_redirects=False).status_code == 200


def test_the_cookie_is_secure_over_https(client: UiClient) -> None:
    answer = client.post(
        "https://testserver.local/ui/login", data={"token": ADMIN}, follow_redirects=False
    )
    assert answer.status_code == 303
    assert "secure" in {p.strip().lower() for p in answer.headers["set-cookie"].split(";")}


@pytest.mark.parametrize("token", ["", "nope", ADMIN + "x", ADMIN[:-1]])
def test_a_wrong_token_gets_the_form_again_with_401_and_no_cookie(
    client: UiClient, token: str
) -> None:
    answer = client.post("/ui/login", data={"token": token}, follow_redirects=False)
    assert answer.status_code == 401
    assert "not valid" in answer.text
    assert "set-cookie" not in answer.headers
    assert client.get("/ui", follow_redirects=False).status_code == 303


def test_a_tampered_or_forged_cookie_is_no_session(client: UiClient) -> None:
    sign_in(client, WORK)
    value = client.cookies["broker_ui_session"]
    body, _, sig = value.partition(".")
    # Another token id with the old signature; a signature of another key.
    payload = sessions._unb64(body).replace(b'"token_id":"', b'"token_id":"0')
    forged = [
        sessions._b64(payload) + "." + sig,
        sessions.issue(b"another key", "x" * 16, time.time())[1],
        value[:-2],
        "garbage",
        "",
    ]
    for bad in forged:
        client.cookies.clear()
        client.cookies.set("broker_ui_session", bad, path="/ui")
        answer = client.get("/ui", follow_redirects=False)
        assert answer.status_code == 303, bad


def test_an_expired_session_is_no_session(client: UiClient) -> None:
    key = sessions.signing_key(ApiSettings(tokens=parse_tokens(TOKENS)))
    admin = client.app.state.authenticator.check(ADMIN)
    long_ago = time.time() - sessions.SESSION_TTL_SECONDS - 1
    _, cookie = sessions.issue(key, admin.token_id, long_ago)
    client.cookies.set("broker_ui_session", cookie, path="/ui")
    assert client.get("/ui", follow_redirects=False).status_code == 303
    _, fresh = sessions.issue(key, admin.token_id, time.time())
    client.cookies.set("broker_ui_session", fresh, path="/ui")
    assert client.get("/ui", follow_redirects=False).status_code == 200


def test_instances_with_the_same_tokens_accept_each_others_sessions(
    client: UiClient, make_client: Callable[[ApiSettings], UiClient]
) -> None:
    sign_in(client, SUBMIT)
    other = make_client(ApiSettings(tokens=parse_tokens(TOKENS)))
    other.cookies.set("broker_ui_session", client.cookies["broker_ui_session"], path="/ui")
    assert other.get("/ui", follow_redirects=False).status_code == 200


def test_a_session_ends_when_its_token_is_removed(
    make_client: Callable[[ApiSettings], UiClient],
) -> None:
    # With BROKER_UI_SECRET the key stays the same, so only the token lookup can end it.
    before = make_client(ApiSettings(tokens=parse_tokens(TOKENS), ui_secret="s" * 32))
    sign_in(before, SUBMIT)
    cookie = before.cookies["broker_ui_session"]
    after = make_client(
        ApiSettings(tokens=parse_tokens(f"{ADMIN},{WORK}:work"), ui_secret="s" * 32)
    )
    after.cookies.set("broker_ui_session", cookie, path="/ui")
    answer = after.get("/ui", follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/ui/login"
    # Without a secret the key itself comes from the tokens, so it changes with them.
    derived = make_client(ApiSettings(tokens=parse_tokens(f"{ADMIN},{SUBMIT}:submit")))
    sign_in(derived, ADMIN)
    kept = make_client(ApiSettings(tokens=parse_tokens(f"{ADMIN},{SUBMIT}:submit")))
    kept.cookies.set("broker_ui_session", derived.cookies["broker_ui_session"], path="/ui")
    assert kept.get("/ui", follow_redirects=False).status_code == 200
    changed = make_client(ApiSettings(tokens=parse_tokens(ADMIN)))
    changed.cookies.set("broker_ui_session", derived.cookies["broker_ui_session"], path="/ui")
    assert changed.get("/ui", follow_redirects=False).status_code == 303


def test_sign_out_needs_csrf_and_clears_the_cookie(client: UiClient) -> None:
    sign_in(client, ADMIN)
    refused = client.post("/ui/logout", data={}, follow_redirects=False)
    assert refused.status_code == 403
    assert client.get("/ui", follow_redirects=False).status_code == 200
    answer = client.post("/ui/logout", data={"csrf": csrf_of(client)}, follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"].startswith("/ui/login")
    assert 'broker_ui_session=""' in answer.headers["set-cookie"] or "max-age=0" in (
        answer.headers["set-cookie"].lower()
    )
    assert client.get("/ui", follow_redirects=False).status_code == 303


def test_an_action_without_or_with_a_wrong_csrf_token_is_refused(
    client: UiClient, broker: Broker, make_client: Callable[[ApiSettings], UiClient]
) -> None:
    job = broker.enqueue("k")
    sign_in(client, ADMIN)
    # Another session of the same token: its CSRF token is not this session's.
    second = sign_in(make_client(ApiSettings(tokens=parse_tokens(TOKENS))), ADMIN)
    for form in ({}, {"csrf": ""}, {"csrf": "0" * 64}, {"csrf": csrf_of(second)}):
        answer = client.post(f"/ui/jobs/{job.id}/cancel", data=form, follow_redirects=False)
        assert answer.status_code == 403, form
        assert "CSRF" in answer.text
        assert answer.headers["content-type"].startswith("text/html")
    assert broker.get_job(job.id).state == "queued"
    done = client.post(
        f"/ui/jobs/{job.id}/cancel", data={"csrf": csrf_of(client)}, follow_redirects=False
    )
    assert done.status_code == 303
    assert done.headers["location"] == f"/ui/jobs/{job.id}?notice=cancelled"
    assert broker.get_job(job.id).state == "cancelled"


def test_a_token_without_write_scopes_sees_everything_but_cannot_act(
    client: UiClient, broker: Broker
) -> None:
    queued = broker.enqueue("k", queue="q1")
    failed = broker.enqueue("k", queue="q2")
    [held] = broker.claim(["q2"], 1, "h:1")
    broker.fail(held, "boom", retryable=False)
    sign_in(client, WORK)
    for path in PAGES:
        assert client.get(path).status_code == 200, path
    job_page = client.get(f"/ui/jobs/{queued.id}").text
    assert "/cancel" not in job_page
    assert "/retry" not in client.get(f"/ui/jobs/{failed.id}").text
    assert "/pause" not in client.get("/ui").text
    assert "Retry all matching" not in client.get("/ui/jobs").text
    csrf = csrf_of(client)
    refused = [
        (f"/ui/jobs/{queued.id}/cancel", {}),
        (f"/ui/jobs/{failed.id}/retry", {}),
        ("/ui/queues/q1/pause", {}),
        ("/ui/jobs/bulk", {"action": "cancel", "ids": str(queued.id)}),
    ]
    for path, form in refused:
        answer = client.post(path, data={"csrf": csrf, **form}, follow_redirects=False)
        assert answer.status_code == 403, path
        assert "scope" in answer.text
    assert client.get("/ui/jobs/bulk?action=cancel").status_code == 403
    assert broker.get_job(queued.id).state == "queued"
    assert broker.get_job(failed.id).state == "failed"
    assert not any(q.paused for q in broker.run(views.queues()))


def test_a_submit_token_may_cancel_and_retry_but_not_pause(
    client: UiClient, broker: Broker
) -> None:
    job = broker.enqueue("k", queue="q1")
    sign_in(client, SUBMIT)
    page = client.get(f"/ui/jobs/{job.id}").text
    assert f"/ui/jobs/{job.id}/cancel" in page
    assert "/pause" not in client.get("/ui").text
    csrf = csrf_of(client)
    cancel = client.post(f"/ui/jobs/{job.id}/cancel", data={"csrf": csrf}, follow_redirects=False)
    assert cancel.status_code == 303
    retry = client.post(f"/ui/jobs/{job.id}/retry", data={"csrf": csrf}, follow_redirects=False)
    assert retry.status_code == 303
    assert broker.get_job(job.id).state == "queued"
    pause = client.post("/ui/queues/q1/pause", data={"csrf": csrf}, follow_redirects=False)
    assert pause.status_code == 403


def test_with_auth_disabled_the_ui_is_open_and_actions_still_need_csrf(
    make_client: Callable[[ApiSettings], UiClient], broker: Broker
) -> None:
    job = broker.enqueue("k")
    c = make_client(ApiSettings(auth_disabled=True))
    first = c.get("/ui", follow_redirects=False)
    assert first.status_code == 200
    assert "broker_ui_session=" in first.headers["set-cookie"]
    assert "Sign out" not in first.text
    refused = c.post(f"/ui/jobs/{job.id}/cancel", data={}, follow_redirects=False)
    assert refused.status_code == 403
    done = c.post(f"/ui/jobs/{job.id}/cancel", data={"csrf": csrf_of(c)}, follow_redirects=False)
    assert done.status_code == 303
    assert broker.get_job(job.id).state == "cancelled"
    assert c.post("/ui/login", data={}, follow_redirects=False).status_code == 303


def test_ui_responses_carry_a_self_only_content_security_policy(client: UiClient) -> None:
    for answer in (
        client.get("/ui/login"),
        client.get("/ui/static/ui.css"),
        sign_in(client, ADMIN).get("/ui"),
        client.get("/ui/jobs/424242"),
    ):
        csp = answer.headers["content-security-policy"]
        assert "default-src 'self'" in csp
        assert "script-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp
        assert answer.headers["x-content-type-options"] == "nosniff"


def test_a_form_another_site_sent_is_refused(client: UiClient, broker: Broker) -> None:
    job = broker.enqueue("k")
    cross = {"Sec-Fetch-Site": "cross-site"}
    answer = client.post("/ui/login", data={"token": ADMIN}, headers=cross, follow_redirects=False)
    assert answer.status_code == 403
    assert "set-cookie" not in answer.headers
    sign_in(client, ADMIN)
    csrf = csrf_of(client)
    refused = client.post(
        f"/ui/jobs/{job.id}/cancel", data={"csrf": csrf}, headers=cross, follow_redirects=False
    )
    assert refused.status_code == 403
    assert broker.get_job(job.id).state == "queued"
    same = {"Sec-Fetch-Site": "same-origin"}
    done = client.post(
        f"/ui/jobs/{job.id}/cancel", data={"csrf": csrf}, headers=same, follow_redirects=False
    )
    assert done.status_code == 303


def test_a_background_refresh_without_a_session_asks_htmx_to_sign_in(client: UiClient) -> None:
    answer = client.get("/ui", headers={"HX-Request": "true"}, follow_redirects=False)
    assert answer.status_code == 200
    assert answer.headers["hx-redirect"] == "/ui/login"
    assert answer.content == b""
