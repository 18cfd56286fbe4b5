"""The groups resource: how many jobs of a named set (a job's `group`) are in each state."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get
from litestar.params import Parameter

from api.auth import require
from api.deps import BrokerClient
from api.problems import responses
from api.schemas import GroupOut
from broker import inspection as views
from broker.spec import GROUP_MAX_LENGTH, NAME_PATTERN


class GroupsController(Controller):
    """Groups: the `submit` scope (whoever enqueues a group may follow it)."""

    path = "/v1/groups"
    tags = ["jobs"]
    security = [{"bearer": []}]
    guards = [require("submit")]

    @get(
        "/{group:str}",
        responses=responses(400, 401, 403, 503),
        summary="A group's jobs per state",
        description=(
            "Counts per state of the jobs enqueued with this `group`, every state listed "
            "(zero included): a group no job has is all zeros. Read from an index of the "
            "group's jobs, so the cost grows with the group, not with the history."
        ),
    )
    async def read(
        self,
        client: BrokerClient,
        group: Annotated[
            str, Parameter(min_length=1, max_length=GROUP_MAX_LENGTH, pattern=NAME_PATTERN)
        ],
    ) -> GroupOut:
        found = await client.run(views.group_counts(group))
        return GroupOut(found.group, found.counts, found.total)
