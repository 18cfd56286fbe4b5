"""The one duration syntax of every CLI flag and environment variable: plain seconds
(`30`, `2.5`) or numbers with units, largest first (`850ms`, `2.5s`, `10m`, `1h30m`, `7d`).

REST bodies, the Python API and SQL keep taking seconds (and intervals); this is for what
people type.
"""

from __future__ import annotations

import math
import re
from typing import Any

import click

from broker.errors import ConfigError

UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ms|[dhms])")
_SECONDS = re.compile(r"\d+(?:\.\d+)?|\.\d+")
HELP = "a duration: seconds, or with units such as 850ms, 2.5s, 10m, 1h30m, 7d"


def parse_duration(text: str, what: str) -> float:
    """Seconds in `text` (see the module); raises ConfigError naming `what` otherwise.

    Units must come largest first, each at most once (`1h30m`, not `30m1h`)."""
    raw = text.strip().lower()
    if _SECONDS.fullmatch(raw):
        return float(raw)
    total = 0.0
    position = 0
    order = list(UNITS)
    last = -1
    for part in _PART.finditer(raw):
        rank = order.index(part.group(2))
        if part.start() != position or rank <= last:
            break
        total += float(part.group(1)) * UNITS[part.group(2)]
        position, last = part.end(), rank
    else:
        if raw and position == len(raw) and math.isfinite(total):
            return total
    raise ConfigError(f"{what} must be {HELP}; got {text!r}")


class Duration(click.ParamType):  # type: ignore[type-arg, unused-ignore]  # generic in click 8.3
    """A click option or its environment variable in the duration syntax, as seconds, at
    least `min` (and above it when `min_open`)."""

    name = "duration"

    def __init__(self, min: float = 0.0, min_open: bool = False) -> None:
        self.min = min
        self.min_open = min_open

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int | float):
            seconds = float(value)
        else:
            what = f"--{param.name.replace('_', '-')}" if param and param.name else "a duration"
            try:
                seconds = parse_duration(str(value), what)
            except ConfigError as exc:
                self.fail(str(exc).removeprefix(f"{what} must be "), param, ctx)
        if seconds < self.min or (self.min_open and seconds == self.min):
            bound = "above" if self.min_open else "at least"
            self.fail(f"must be {bound} {self.min:g} s, got {value!r}", param, ctx)
        return seconds

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        # click 8.2 passes ctx (by name), 8.1 does not.
        return "DURATION"
