"""The OpenAPI docs UIs work offline: every page names only same-origin URLs, every asset
it names is served by the app with the right content type, and the vendored files are
the pinned ones. With Chromium and Playwright present, a real browser renders each page
with every request off the host aborted, and none is attempted."""

from __future__ import annotations

import hashlib
import importlib.util
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from litestar.testing import TestClient

from api import docs
from tests.api.conftest import serve

DOC_PAGES = ["/schema", "/schema/scalar", "/schema/swagger"]
CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css"}
CHROMIUM = Path("/usr/bin/chromium")


class _Refs(HTMLParser):
    """Every URL a page makes the browser fetch: src, href and data-url attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href", "data-url") and value is not None:
                self.urls.append(value)


def references(html: str) -> list[str]:
    parser = _Refs()
    parser.feed(html)
    return parser.urls


@pytest.mark.parametrize("page", DOC_PAGES)
def test_docs_page_names_only_same_origin_assets(client: TestClient, page: str) -> None:  # type: ignore[type-arg]
    r = client.get(page)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    urls = references(r.text)
    assert urls, "the page names no assets at all"
    fetched = 0
    for url in urls:
        if url.startswith("data:"):
            continue
        # Same origin: a path, never a scheme or a protocol-relative //host.
        assert url.startswith("/") and not url.startswith("//"), url
        asset = client.get(url)
        assert asset.status_code == 200, url
        fetched += 1
        suffix = Path(url.split("?")[0]).suffix
        if suffix in CONTENT_TYPES:
            assert asset.headers["content-type"].startswith(CONTENT_TYPES[suffix]), (
                url,
                asset.headers["content-type"],
            )
            assert len(asset.content) > 0
    assert fetched >= 2
    assert other_hosts(r.text) == []


def other_hosts(html: str) -> list[str]:
    """Every host named in a page (scripts, styles, the favicon, fonts), leaving out the
    schema Swagger UI inlines, whose strings are data and never fetched."""
    markup = re.sub(r"spec: \{.*?\},\s*dom_id", "", html, flags=re.S)
    return re.findall(r"(?:https?:)?//[A-Za-z0-9.-]+\.[A-Za-z]{2,}", markup)


def test_no_html_page_under_the_schema_path_names_another_host(client: TestClient) -> None:  # type: ignore[type-arg]
    """Every page the OpenAPI router serves, the ones named above and any other
    (Swagger UI's oauth2-redirect.html, a plugin added later)."""
    paths = sorted(
        {
            path
            for route in client.app.routes
            for path in [route.path]
            if path.startswith("/schema") and "{" not in path
        }
    )
    assert set(DOC_PAGES) <= set(paths), paths
    pages = 0
    for path in paths:
        r = client.get(path)
        assert r.status_code == 200, path
        if r.headers["content-type"].startswith("text/html"):
            pages += 1
            assert other_hosts(r.text) == [], path
    assert pages >= len(DOC_PAGES) + 1  # the redirect page too


def test_favicon_requests_nothing(client: TestClient) -> None:  # type: ignore[type-arg]
    for page in DOC_PAGES:
        icons = re.findall(r"<link rel='icon'[^>]*>", client.get(page).text)
        assert icons == ["<link rel='icon' href='data:,'>"], page


def test_scalar_is_told_not_to_load_its_fonts(client: TestClient) -> None:  # type: ignore[type-arg]
    assert '"withDefaultFonts":false' in client.get("/schema").text


def test_docs_assets_need_no_token(client: TestClient) -> None:  # type: ignore[type-arg]
    r = client.get(f"{docs.STATIC_PATH}/scalar/standalone.js")
    assert r.status_code == 200
    assert "max-age=86400" in r.headers["cache-control"]
    assert client.get(f"{docs.STATIC_PATH}/missing.js").status_code == 404
    assert client.get(f"{docs.STATIC_PATH}/../docs.py").status_code == 404


def test_vendored_files_are_the_pinned_ones() -> None:
    """VERSION names the versions api/docs.py pins and the checksum of every file kept."""
    version = (docs.STATIC_DIR / "VERSION").read_text()
    assert f"@scalar/api-reference {docs.SCALAR_VERSION}" in version
    assert f"swagger-ui-dist {docs.SWAGGER_UI_VERSION}" in version
    sums = re.findall(r"^([0-9a-f]{64})  (\S+)$", version, flags=re.M)
    assert len(sums) == 4
    for digest, name in sums:
        assert hashlib.sha256((docs.STATIC_DIR / name).read_bytes()).hexdigest() == digest, name
    for licence in ("scalar/LICENSE", "swagger/LICENSE", "swagger/NOTICE"):
        assert (docs.STATIC_DIR / licence).stat().st_size > 0


# -- a real browser -------------------------------------------------------------------

_HAVE_BROWSER = CHROMIUM.exists() and importlib.util.find_spec("playwright") is not None


@pytest.fixture
def live_api(db_url: str) -> Iterator[str]:
    with serve(db_url) as base:
        yield base


@pytest.mark.skipif(not _HAVE_BROWSER, reason="needs /usr/bin/chromium and playwright")
@pytest.mark.parametrize("page", ["/schema", "/schema/swagger"])
def test_browser_renders_docs_without_another_host(live_api: str, page: str) -> None:
    from playwright.sync_api import Route, sync_playwright

    origin = live_api
    elsewhere: list[str] = []
    failed: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            context = browser.new_context()

            def route(r: Route) -> None:
                url = r.request.url
                if url.startswith(origin + "/") or url.startswith("data:"):
                    r.continue_()
                else:
                    elsewhere.append(url)
                    r.abort()

            context.route("**/*", route)
            tab = context.new_page()
            tab.on("requestfailed", lambda req: failed.append(req.url))
            tab.goto(origin + page, wait_until="networkidle")
            # An operation's summary: drawn by the UI from the schema, so the script ran.
            tab.get_by_text("Liveness: the process is up").first.wait_for(timeout=30_000)
            tab.wait_for_load_state("networkidle")
        finally:
            browser.close()
    assert elsewhere == []
    assert failed == []
