"""UI sessions: a signed cookie naming the signed-in token, and the CSRF token bound to it.

The cookie holds the token's id (never the token), an expiry and a random nonce, with an
HMAC-SHA256 over them. The key is BROKER_UI_SECRET when set, else derived from the
configured tokens, so API instances with the same tokens accept each other's sessions and
changing the tokens ends every session. The CSRF token is an HMAC of the session's nonce:
a page of this origin can carry it, another site cannot read it (docs/decisions/016).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

import msgspec

from api.config import ApiSettings

COOKIE_NAME = "broker_ui_session"
COOKIE_PATH = "/ui"
SESSION_TTL_SECONDS = 8 * 3600
_KEY_CONTEXT = b"pg-broker ui session v1"
_CSRF_CONTEXT = b"csrf:"


class Session(msgspec.Struct, frozen=True):
    """What the cookie says: whose session (token id), until when (unix time), its nonce."""

    token_id: str
    expires: int
    nonce: str


def signing_key(settings: ApiSettings) -> bytes:
    """The key that signs sessions: from BROKER_UI_SECRET, else from every configured token
    and its scopes (order does not matter)."""
    if settings.ui_secret is not None:
        material = b"secret\n" + settings.ui_secret.encode()
    else:
        lines = sorted(f"{t.secret}\n{'+'.join(sorted(t.scopes))}" for t in settings.tokens)
        material = b"tokens\n" + "\n\n".join(lines).encode()
    return hmac.new(_KEY_CONTEXT, material, hashlib.sha256).digest()


def issue(key: bytes, token_id: str, now: float) -> tuple[Session, str]:
    """A new session for `token_id` and its cookie value."""
    session = Session(token_id, int(now) + SESSION_TTL_SECONDS, secrets.token_urlsafe(18))
    payload = msgspec.json.encode(session)
    return session, f"{_b64(payload)}.{_b64(_mac(key, payload))}"


def read(key: bytes, cookie: str | None, now: float) -> Session | None:
    """The session in `cookie` when its signature holds and it has not expired; else None."""
    if not cookie or len(cookie) > 1024:
        return None
    body, _, sig = cookie.partition(".")
    try:
        payload = _unb64(body)
        good = hmac.compare_digest(_unb64(sig), _mac(key, payload))
    except (ValueError, binascii.Error):
        return None
    if not good:
        return None
    try:
        session = msgspec.json.decode(payload, type=Session)
    except msgspec.DecodeError:
        return None
    return session if session.expires > now else None


def csrf_token(key: bytes, session: Session) -> str:
    """The CSRF token every form of this session carries."""
    return hmac.new(key, _CSRF_CONTEXT + session.nonce.encode(), hashlib.sha256).hexdigest()


def csrf_valid(key: bytes, session: Session, presented: object) -> bool:
    """Whether `presented` (a form field) is this session's CSRF token (constant time)."""
    if not isinstance(presented, str):
        return False
    return hmac.compare_digest(presented.encode(), csrf_token(key, session).encode())


def _mac(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, payload, hashlib.sha256).digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
