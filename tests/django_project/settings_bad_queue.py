"""The test project with a backend that refuses the `emails` queue one of its tasks
declares: importing the tasks raises Django's InvalidTask, which a --django worker must
report in one line."""

from __future__ import annotations

from tests.django_project.settings import *  # noqa: F403
from tests.django_project.settings import TASKS

TASKS = {**TASKS, "default": {**TASKS["default"], "QUEUES": ["default"]}}
