"""Bearer-token authentication with scopes (submit, work, admin), as Litestar guards.

Tokens are compared in constant time: every configured token is checked (no early exit)
and the comparison is between fixed-length digests, so neither the position of a match
nor a token's length shows in the response time. `admin` implies every other scope.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.types import Guard

from api.config import SCOPES, ApiSettings
from broker.spec import SCOPE_SEPARATOR

_PRINCIPAL = "broker_principal"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the scopes granted and a stable, non-secret id for the token."""

    token_id: str
    scopes: frozenset[str]

    @property
    def key_prefix(self) -> str:
        """How this token's idempotency keys begin when stored (its scope and ':')."""
        return self.token_id + SCOPE_SEPARATOR


ANONYMOUS = Principal(hashlib.sha256(b"").hexdigest()[:16], SCOPES)


class Authenticator:
    """Resolves a request's Authorization header to a Principal."""

    def __init__(self, settings: ApiSettings) -> None:
        self.disabled = settings.auth_disabled
        self._tokens = [
            (hashlib.sha256(t.secret.encode()).digest(), t.scopes) for t in settings.tokens
        ]

    def authenticate(self, authorization: str | None) -> Principal:
        """The caller's principal. Raises NotAuthorizedException (401) without a valid token."""
        if self.disabled:
            return ANONYMOUS
        challenge = {"WWW-Authenticate": 'Bearer realm="pg-broker"'}
        if not authorization:
            raise NotAuthorizedException("missing bearer token", headers=challenge)
        scheme, _, presented = authorization.partition(" ")
        presented = presented.strip()
        if scheme.lower() != "bearer" or not presented:
            raise NotAuthorizedException(
                "the Authorization header must be 'Bearer <token>'", headers=challenge
            )
        found = self.check(presented)
        if found is None:
            raise NotAuthorizedException("invalid bearer token", headers=challenge)
        return found

    def check(self, presented: str) -> Principal | None:
        """The principal of the token `presented`, or None when no configured token is it;
        compared in constant time, every token checked."""
        digest = hashlib.sha256(presented.encode()).digest()
        matched: frozenset[str] | None = None
        for known, scopes in self._tokens:
            if hmac.compare_digest(digest, known):
                matched = scopes
        return None if matched is None else Principal(digest.hex()[:16], matched)

    def lookup(self, token_id: str) -> Principal | None:
        """The principal whose token id is `token_id` while that token is still configured
        (a UI session names its token by id; removing the token ends the session)."""
        matched: frozenset[str] | None = None
        for known, scopes in self._tokens:
            if hmac.compare_digest(known.hex()[:16], token_id):
                matched = scopes
        return None if matched is None else Principal(token_id, matched)


def principal(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    """The principal a guard stored on this request (ANONYMOUS when auth is disabled)."""
    found = connection.scope.get("state", {}).get(_PRINCIPAL)
    return found if isinstance(found, Principal) else ANONYMOUS


def require(scope: str) -> Guard:
    """A guard admitting callers whose token grants `scope` (or admin)."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")

    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        auth: Authenticator = connection.app.state.authenticator
        who = auth.authenticate(connection.headers.get("authorization"))
        if scope not in who.scopes and "admin" not in who.scopes:
            raise PermissionDeniedException(f"this token lacks the {scope!r} scope")
        connection.scope.setdefault("state", {})[_PRINCIPAL] = who

    guard.__name__ = f"require_{scope}"
    return guard
