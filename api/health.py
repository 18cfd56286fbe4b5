"""Health checks for orchestrators: liveness (process up) and readiness (database migrated)."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from litestar import Controller, Request, get
from litestar.exceptions import ServiceUnavailableException

from api.deps import BrokerClient, runtime_of
from api.problems import responses
from api.schemas import Health, Readiness
from broker import BrokerError, NotMigrated
from broker.inspection import schema_revision

# Probes answer within this even while the database is down: a request waiting for a
# pooled connection would otherwise wait the pool's full timeout (BROKER_API_DB_WAIT).
READY_TIMEOUT = 1.5


class HealthController(Controller):
    """Unauthenticated on purpose: probes carry no tokens and these reveal nothing."""

    tags = ["health"]

    @get("/healthz", summary="Liveness: the process is up")
    async def healthz(self) -> Health:
        return Health("ok")

    @get(
        "/readyz",
        responses=responses(503),
        summary="Readiness: the database is reachable and migrated to this code's head",
    )
    async def readyz(self, request: Request[Any, Any, Any], client: BrokerClient) -> Readiness:
        runtime = runtime_of(request)
        try:
            current = await asyncio.wait_for(client.run(schema_revision()), READY_TIMEOUT)
        except TimeoutError:
            raise _not_ready(f"the database did not answer within {READY_TIMEOUT:g} s") from None
        except (BrokerError, psycopg.Error) as exc:
            if isinstance(exc, NotMigrated | psycopg.errors.UndefinedTable):
                raise _not_ready(
                    "the database has not been migrated: run `broker migrate`"
                ) from None
            raise _not_ready("the database is unreachable") from None
        if current != runtime.expected_revision:
            raise _not_ready(
                f"the database is at revision {current}, this code expects "
                f"{runtime.expected_revision}: run `broker migrate`"
            )
        return Readiness("ok", "reachable", current, runtime.expected_revision)


def _not_ready(detail: str) -> Exception:
    return ServiceUnavailableException(detail)
