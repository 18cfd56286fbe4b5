"""docs/django.md's tables say what broker.django does: its OPTIONS keys and defaults, and
the Django status of every job state."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

try:
    import broker.django as broker_django
except ImportError:
    pytest.skip("neither django.tasks nor django-tasks is installed", allow_module_level=True)

from broker.types import JOB_STATES

DOC = Path(__file__).resolve().parents[2] / "docs" / "django.md"


def table_rows(first_header: str) -> list[list[str]]:
    """The body rows of the table whose first header cell is `first_header`."""
    lines = DOC.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def code(cell: str) -> str:
    found = re.findall(r"`([^`]+)`", cell)
    assert found, cell
    return found[0]


def test_the_options_table_lists_every_option_with_its_default() -> None:
    rows = table_rows("OPTIONS key")
    assert [code(row[0]) for row in rows] == list(broker_django.OPTIONS)
    defaults = {code(row[0]): row[1] for row in rows}
    assert defaults["MAX_ATTEMPTS"] == f"`{broker_django.DEFAULT_MAX_ATTEMPTS}`"
    assert defaults["POOL_SIZE"] == f"`{broker_django.DEFAULT_POOL_SIZE}`"


def test_the_state_table_is_the_mapping() -> None:
    rows = table_rows("pg-broker state")
    documented = {code(row[0]): code(row[1]) for row in rows}
    assert set(documented) == set(JOB_STATES)
    assert documented == {state: str(status) for state, status in broker_django.STATUS.items()}
