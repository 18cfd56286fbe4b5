"""Not in an installed app: a worker must not import it because a job's kind names it
(importing it leaves a mark where DJANGO_TEST_IMPORT_MARKER says)."""

from __future__ import annotations

import os
from pathlib import Path

_marker = os.environ.get("DJANGO_TEST_IMPORT_MARKER")
if _marker:
    Path(_marker).write_text("imported")


def run() -> None:
    pass
