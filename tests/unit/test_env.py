"""broker._env: the one list of BROKER_* settings, and the warning for any other name."""

from __future__ import annotations

import re
from pathlib import Path

from broker import _env

ROOT = Path(__file__).resolve().parents[2]
NAME = re.compile(r"\bBROKER_[A-Z0-9_]*[A-Z0-9]\b")
# Unknown names the tests use on purpose.
TYPOS = {"BROKER_DATABSE_URL", "BROKER_CONCURENCY", "BROKER_FROBNICATE"}


def test_a_mistyped_name_is_flagged_with_the_closest_known_one() -> None:
    environ = {"BROKER_DATABSE_URL": "postgresql://x", "BROKER_SCHEMA": "broker", "HOME": "/"}
    assert _env.unknown(environ) == [("BROKER_DATABSE_URL", "BROKER_DATABASE_URL")]
    [line] = _env.warnings(environ)
    assert line == (
        "warning: BROKER_DATABSE_URL is not a pg-broker setting and is ignored;"
        " did you mean BROKER_DATABASE_URL?"
    )
    assert _env.warnings({"BROKER_CONCURENCY": "4"})[0].endswith("BROKER_CONCURRENCY?")


def test_a_name_like_no_setting_gets_no_suggestion() -> None:
    assert _env.unknown({"BROKER_FROBNICATE": "1"}) == [("BROKER_FROBNICATE", None)]
    assert _env.warnings({"BROKER_FROBNICATE": "1"}) == [
        "warning: BROKER_FROBNICATE is not a pg-broker setting and is ignored"
    ]


def test_known_names_and_other_variables_pass() -> None:
    assert _env.unknown({name: "1" for name in _env.KNOWN} | {"PATH": "/bin"}) == []


def test_every_name_the_source_and_docs_use_is_known() -> None:
    used: dict[str, Path] = {}
    for folder in ("broker", "api", "tests", "bench", "docs"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in {".py", ".md", ".sh", ".sql"} and path.is_file():
                for name in NAME.findall(path.read_text(errors="replace")):
                    used.setdefault(name, path)
    for extra in ("README.md", "compose.yaml", "Dockerfile", ".ci/run"):
        if (ROOT / extra).exists():
            for name in NAME.findall((ROOT / extra).read_text()):
                used.setdefault(name, ROOT / extra)
    missing = {
        name: str(path.relative_to(ROOT))
        for name, path in used.items()
        if name not in _env.KNOWN and name not in TYPOS
    }
    assert missing == {}, "add these to broker/_env.py KNOWN (or fix the typo)"
