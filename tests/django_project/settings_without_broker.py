"""The test project with Django's ImmediateBackend instead of pg-broker's: a worker started
with --django on it must say there is no pg-broker backend."""

from __future__ import annotations

import sys

from tests.django_project.settings import *  # noqa: F403
from tests.django_project.settings import TASKS as _BROKER_TASKS

_api = "django.tasks" if sys.version_info >= (3, 12) else "django_tasks"
_immediate = {"BACKEND": f"{_api}.backends.immediate.ImmediateBackend", "QUEUES": []}
TASKS = dict.fromkeys(_BROKER_TASKS, _immediate)
