"""What handlers share, kept on app.state by create_app: the broker client, settings, metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from litestar import Request
from litestar.datastructures import State
from litestar.di import NamedDependency

from api.batcher import EnqueueBatcher
from api.config import ApiSettings
from api.metrics import Metrics
from broker import AsyncBroker
from broker.config import Settings


@dataclass
class Runtime:
    """Per-app objects; `client` is set by the lifespan once the pool is open."""

    settings: Settings
    api: ApiSettings
    metrics: Metrics
    expected_revision: str
    batcher: EnqueueBatcher = field(default_factory=EnqueueBatcher)
    client: AsyncBroker | None = None


def runtime_of(request: Request[Any, Any, Any]) -> Runtime:
    """The Runtime of the app serving `request`."""
    found: Runtime = request.app.state.runtime
    return found


def client(state: State) -> AsyncBroker:
    """The app's broker client (a Litestar dependency). Raises if the lifespan did not run."""
    found: AsyncBroker | None = state.runtime.client
    if found is None:
        raise RuntimeError("the API's database pool is not open (lifespan not started)")
    return found


# Handlers declare `client: BrokerClient` to receive the app's AsyncBroker.
BrokerClient = NamedDependency[AsyncBroker]
