"""The Litestar application: `create_app()` wires controllers, auth, problems and the pool."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from psycopg_pool import AsyncConnectionPool

from api import deps, docs, ui
from api.auth import Authenticator
from api.config import ApiSettings
from api.groups import GroupsController
from api.health import HealthController
from api.jobs import JobsController
from api.leases import LeasesController
from api.metrics import Metrics, RequestMetrics
from api.operations import (
    MetricsController,
    QueuesController,
    StatsController,
    WorkersController,
)
from api.problems import exception_handlers
from api.schedules import SchedulesController
from api.strict import TYPE_DECODERS
from broker import AsyncBroker, __version__
from broker import _executor as executor
from broker.config import DEFAULT_PREPARE_THRESHOLD, Settings
from broker.errors import ConfigError
from broker.migrate import head_revision


def open_pool(
    url: str, max_size: int, wait: float, prepare_threshold: int | None = DEFAULT_PREPARE_THRESHOLD
) -> AsyncConnectionPool[Any]:
    """An unopened pool of configured autocommit connections, as the API's lifespan uses
    (`prepare_threshold`: BROKER_PREPARE_THRESHOLD's, None for none)."""
    return executor.open_async_pool(
        url, min_size=1, max_size=max_size, timeout=wait, prepare_threshold=prepare_threshold
    )


def create_app(
    settings: Settings | None = None,
    pool: AsyncConnectionPool[Any] | None = None,
    api_settings: ApiSettings | None = None,
) -> Litestar:
    """Build the API. Without `pool`, the lifespan opens one to settings.database_url (or
    the embedded server) and closes it at shutdown; a given pool is used and left open.

    Raises ConfigError when no API token is configured and auth is not disabled.
    """
    settings = settings or Settings.from_env()
    api_settings = api_settings or ApiSettings.from_env()
    try:
        expected = head_revision()
    except ConfigError:
        expected = "unknown"
    runtime = deps.Runtime(settings, api_settings, Metrics(), expected)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        owned: AsyncConnectionPool[Any] | None = None
        active = pool
        if active is None:
            from broker.db import database_url

            owned = active = open_pool(
                database_url(settings),
                api_settings.pool_size,
                api_settings.db_wait,
                settings.prepare_threshold,
            )
            # Not waiting for connections: the API starts (and /readyz says why it is not
            # ready) even while the database is down.
            await owned.open(wait=False)
        runtime.client = AsyncBroker(
            active,
            schema=settings.schema,
            lease_ttl=settings.lease_ttl,
            listen_url=settings.listen_url,
        )
        try:
            yield
        finally:
            runtime.client = None
            if owned is not None:
                await owned.close()

    return Litestar(
        route_handlers=[
            HealthController,
            JobsController,
            GroupsController,
            LeasesController,
            QueuesController,
            WorkersController,
            StatsController,
            MetricsController,
            SchedulesController,
            docs.static_router(),
            ui.router(),
        ],
        lifespan=[lifespan],
        middleware=[DefineMiddleware(RequestMetrics, metrics=runtime.metrics)],
        state=State({"runtime": runtime, "authenticator": Authenticator(api_settings)}),
        dependencies={
            "client": Provide(deps.client, sync_to_thread=False),
        },
        exception_handlers=exception_handlers(),
        template_config=ui.template_config(),
        type_decoders=TYPE_DECODERS,
        request_max_body_size=api_settings.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="pg-broker",
            version=__version__,
            description=(
                "A job broker that lives in PostgreSQL. Errors are RFC 9457 problem details "
                "(application/problem+json). Authenticate with `Authorization: Bearer <token>`."
            ),
            path="/schema",
            render_plugins=docs.render_plugins(),
            components=Components(
                security_schemes={
                    "bearer": SecurityScheme(type="http", scheme="bearer"),
                }
            ),
        ),
        signature_namespace={"AsyncBroker": AsyncBroker},
        debug=False,
    )
