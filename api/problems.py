"""RFC 9457 problem details: every error the API returns, in one shape and one place.

Messages come from the broker's own exceptions or from request validation; database
errors and stack traces never reach a client (they are logged instead).
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import psycopg
from litestar import Request, Response
from litestar.exceptions import HTTPException, ServiceUnavailableException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.types import ExceptionHandlersMap

from api.schemas import Problem
from broker.errors import (
    BrokerError,
    ConfigError,
    DatabaseUnavailable,
    IdempotencyConflict,
    InvalidJobError,
    InvalidQueueSettings,
    InvalidTransition,
    JobNotFound,
    LeaseLost,
    NotMigrated,
    ScheduleNotFound,
)

PROBLEM_MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "https://pg-broker.dev/problems/"

log = logging.getLogger("api")

NOT_MIGRATED = "the database is not migrated: run `broker migrate`"

# Broker exception -> (HTTP status, problem type slug).
_BROKER_ERRORS: tuple[tuple[type[BrokerError], int, str], ...] = (
    (InvalidJobError, 422, "invalid-job"),
    (InvalidQueueSettings, 422, "invalid-queue-settings"),
    (IdempotencyConflict, 422, "idempotency-conflict"),
    (JobNotFound, 404, "job-not-found"),
    (ScheduleNotFound, 404, "schedule-not-found"),
    (InvalidTransition, 409, "invalid-transition"),
    (LeaseLost, 409, "lease-lost"),
    (NotMigrated, 503, "not-migrated"),
    (DatabaseUnavailable, 503, "database-unavailable"),
    (ConfigError, 500, "configuration"),
)


def problem(
    request: Request[Any, Any, Any],
    status: int,
    detail: str,
    slug: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> Response[Problem]:
    """A problem+json response for `request`."""
    phrase = HTTPStatus(status).phrase
    body = Problem(
        type=TYPE_BASE + (slug or phrase.lower().replace(" ", "-")),
        title=phrase,
        status=status,
        detail=detail,
        instance=request.url.path,
        errors=errors,
    )
    return Response(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def _http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Problem]:
    errors: list[dict[str, Any]] | None = None
    if isinstance(exc, ValidationException) and isinstance(exc.extra, list):
        errors = [e if isinstance(e, dict) else {"message": str(e)} for e in exc.extra]
    detail = exc.detail or HTTPStatus(exc.status_code).phrase
    if exc.status_code >= 500 and not isinstance(exc, ServiceUnavailableException):
        # Litestar's own 5xx details can carry internals; keep them in the log.
        log.error("internal error on %s: %s", request.url.path, exc.detail)
        detail = HTTPStatus(exc.status_code).phrase
    return problem(request, exc.status_code, detail, errors=errors, headers=exc.headers)


def _broker_error(request: Request[Any, Any, Any], exc: BrokerError) -> Response[Problem]:
    for cls, status, slug in _BROKER_ERRORS:
        if isinstance(exc, cls):
            # Only the operator's fix is said for these; other 5xx details stay in the log.
            if isinstance(exc, NotMigrated):
                log.error("%s on %s: %s", type(exc).__name__, request.url.path, exc)
                return problem(request, status, NOT_MIGRATED, slug)
            if status >= 500:
                log.error("%s on %s: %s", type(exc).__name__, request.url.path, exc)
                return problem(request, status, HTTPStatus(status).description, slug)
            return problem(request, status, str(exc), slug)
    log.error("unmapped broker error on %s: %r", request.url.path, exc)
    return problem(request, 500, "internal error")


def _database_error(request: Request[Any, Any, Any], exc: psycopg.Error) -> Response[Problem]:
    log.error("database error on %s: %s", request.url.path, exc, exc_info=exc)
    if isinstance(exc, psycopg.errors.UndefinedTable | psycopg.errors.UndefinedFunction):
        return problem(request, 503, NOT_MIGRATED, "not-migrated")
    # OperationalError covers lost connections and the pool's PoolTimeout.
    if isinstance(exc, psycopg.OperationalError) and not _retryable(exc):
        return problem(request, 503, "the database is unavailable", "database-unavailable")
    if _retryable(exc):
        # Serialization failures, deadlocks and statement timeouts: nothing is wrong with
        # the request, and repeating it may well succeed.
        return problem(request, 503, "the database asked for a retry; try again", "retry")
    return problem(request, 500, "internal error")


def _retryable(exc: psycopg.Error) -> bool:
    return exc.sqlstate is not None and (exc.sqlstate.startswith("40") or exc.sqlstate == "57014")


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    log.error("unhandled error on %s", request.url.path, exc_info=exc)
    return problem(request, 500, "internal error")


def exception_handlers() -> ExceptionHandlersMap:
    """Handlers turning every exception into problem+json."""
    return {
        HTTPException: _http_exception,
        BrokerError: _broker_error,
        psycopg.Error: _database_error,
        Exception: _unexpected,
    }


def responses(*statuses: int) -> dict[int, ResponseSpec]:
    """OpenAPI entries documenting that `statuses` answer with problem+json."""
    return {
        status: ResponseSpec(
            data_container=Problem,
            description=HTTPStatus(status).phrase,
            media_type=PROBLEM_MEDIA_TYPE,
            generate_examples=False,
        )
        for status in statuses
    }
