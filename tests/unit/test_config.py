"""Settings validation that needs no database: how long a schema name may be."""

from __future__ import annotations

import pytest

from broker import ConfigError
from broker.config import validate_schema


def test_schema_names_leave_room_for_notify_channels() -> None:
    assert validate_schema("s" * 56) == "s" * 56
    with pytest.raises(ConfigError, match="at most 56"):
        validate_schema("s" * 57)
