"""The docs' examples are true: docs/api.md is what docs/gen_api.py generates from the
app's OpenAPI schema, and every ```python block in docs/*.md runs.

Convention for examples in docs/: a ```python block is runnable. The blocks of one page
run in order, in one namespace, in a fresh Python process (task registrations and
event loops never leak between pages or into the test process), in an empty working
directory, with BROKER_DATABASE_URL set to a fresh migrated database. A fragment that
cannot run on its own is marked ```py and is not run. (README.md's examples are run by
test_readme.py, docs/cli.md's console blocks by test_cli_doc.py.)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", flags=re.DOTALL | re.MULTILINE)
RUNNER = """
import sys
from pathlib import Path

namespace = {"__name__": "__docs_example__"}
page, blocks = sys.argv[1], sys.argv[2:]
for number, path in enumerate(blocks, 1):
    exec(compile(Path(path).read_text(), f"{page} python block {number}", "exec"), namespace)
"""


def python_blocks(page: Path) -> list[str]:
    return [body for language, body in FENCE.findall(page.read_text()) if language == "python"]


PAGES = sorted(page for page in DOCS.glob("*.md") if python_blocks(page))


def test_api_reference_is_generated_from_the_schema() -> None:
    done = subprocess.run(
        [sys.executable, str(DOCS / "gen_api.py"), "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def test_the_convention_is_followed() -> None:
    """Runnable pages exist, and no block uses an unknown Python fence."""
    names = {page.name for page in PAGES}
    assert {"python-api.md", "worker-guide.md", "quickstart.md"} <= names
    for page in DOCS.glob("*.md"):
        for language, _ in FENCE.findall(page.read_text()):
            assert language not in ("python3", "pycon", "Python"), f"{page.name}: ```{language}"


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_python_blocks_run(page: Path, db_url: str, tmp_path: Path) -> None:
    files = []
    for number, code in enumerate(python_blocks(page), 1):
        path = tmp_path / f"block{number}.py"
        path.write_text(code)
        files.append(str(path))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env["BROKER_DATABASE_URL"] = db_url
    env["BROKER_HOME"] = str(tmp_path / "home")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, f"docs/{page.name}", *files],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"docs/{page.name}:\n{done.stderr}"


LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {slug(m) for m in re.findall(r"^#+ (.*)$", text, flags=re.MULTILINE)}


def test_index_links_every_page() -> None:
    """Every page, and the decisions folder (new decision records need no index edit)."""
    index = (DOCS / "index.md").read_text()
    linked = {target.split("#")[0] for target in LINK.findall(index)}
    pages = {page.name for page in DOCS.glob("*.md")} - {"index.md"}
    pages.add("decisions/")
    assert pages <= linked, f"docs/index.md does not link {sorted(pages - linked)}"


@pytest.mark.parametrize("page", sorted(DOCS.glob("*.md")), ids=lambda p: p.name)
def test_relative_links_resolve(page: Path) -> None:
    for target in LINK.findall(FENCE.sub("", page.read_text())):
        if re.match(r"^[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page.name}: broken link {target}"
        if anchor and resolved.suffix == ".md":
            assert anchor in anchors(resolved), f"{page.name}: no heading for {target}"
