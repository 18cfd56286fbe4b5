"""What handlers share, kept on app.state by create_app: the broker client, settings, metrics."""

from __future__ import annotations

from dataclasses import dataclass, field

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

    @property
    def worker_stale_after(self) -> float:
        """Seconds without a heartbeat after which a worker counts as gone."""
        return 3 * self.settings.lease_ttl


def runtime(state: State) -> Runtime:
    """The app's Runtime (a Litestar dependency)."""
    found: Runtime = state.runtime
    return found


def client(state: State) -> AsyncBroker:
    """The app's broker client (a Litestar dependency). Raises if the lifespan did not run."""
    found = runtime(state).client
    if found is None:
        raise RuntimeError("the API's database pool is not open (lifespan not started)")
    return found


# Handlers declare `client: BrokerClient` to receive the app's AsyncBroker.
BrokerClient = NamedDependency[AsyncBroker]
