"""The OpenAPI docs UIs (Scalar at /schema, Swagger UI at /schema/swagger), served offline.

Litestar's render plugins load their JavaScript, CSS and favicon from CDNs by default; a
machine without internet then shows a blank page. Here every asset is a pinned file under
api/static/docs/ (versions, licences and checksums in its README and VERSION), served by
the app itself. Decision 018 says why both UIs stay.
"""

from __future__ import annotations

from pathlib import Path

from litestar import Router
from litestar.datastructures import CacheControlHeader
from litestar.openapi.plugins import (
    OpenAPIRenderPlugin,
    ScalarRenderPlugin,
    SwaggerRenderPlugin,
)
from litestar.static_files import create_static_files_router

SCALAR_VERSION = "1.76.0"
SWAGGER_UI_VERSION = "5.35.0"

STATIC_DIR = Path(__file__).parent / "static" / "docs"
STATIC_PATH = "/static/docs"

# A data: URL asks the browser for nothing (no favicon request, not even /favicon.ico).
_NO_FAVICON = "<link rel='icon' href='data:,'>"


def _asset(name: str, version: str) -> str:
    # The version in the query string makes an upgrade bypass a browser's cached copy.
    return f"{STATIC_PATH}/{name}?v={version}"


def render_plugins() -> list[OpenAPIRenderPlugin]:
    """Scalar at the schema path itself and Swagger UI at `<schema path>/swagger`."""
    return [
        ScalarRenderPlugin(
            js_url=_asset("scalar/standalone.js", SCALAR_VERSION),
            css_url=_asset("docs.css", SCALAR_VERSION),
            favicon=_NO_FAVICON,
            options={
                # Scalar otherwise loads its fonts from its own host,
                "withDefaultFonts": False,
                # and offers its hosted services (an AI agent, SDK generation, sharing,
                # usage telemetry), all of which talk to its own hosts.
                "agent": {"disabled": True},
                "showDeveloperTools": "never",
                "telemetry": False,
            },
        ),
        SwaggerRenderPlugin(
            path="/swagger",
            js_url=_asset("swagger/swagger-ui-bundle.js", SWAGGER_UI_VERSION),
            css_url=_asset("swagger/swagger-ui.css", SWAGGER_UI_VERSION),
            standalone_preset_js_url=_asset(
                "swagger/swagger-ui-standalone-preset.js", SWAGGER_UI_VERSION
            ),
            favicon=_NO_FAVICON,
        ),
    ]


def static_router() -> Router:
    """The router serving api/static/docs/ at STATIC_PATH, open to anyone like /schema."""
    return create_static_files_router(
        path=STATIC_PATH,
        directories=[STATIC_DIR],
        name="docs-static",
        cache_control=CacheControlHeader(max_age=86400, public=True),
    )
