"""The operator UI at /ui: server-rendered pages (Jinja, autoescaped), htmx vendored as a
static file for live refresh, sign-in with an API token. docs/ui.md explains it to
operators; docs/decisions/016-operator-ui.md says why it is built this way."""

from __future__ import annotations

from pathlib import Path

from litestar import Router
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.static_files import create_static_files_router
from litestar.template import TemplateConfig

from api.problems import exception_handlers
from api.ui._web import PUBLIC, add_filters, error_page, require_session, security_headers
from api.ui.actions import ActionsController, LoginController
from api.ui.pages import PagesController

HERE = Path(__file__).parent
# The vendored htmx (npm `htmx.org`, `npm pack htmx.org@2`, dist/htmx.min.js, BSD-0):
# the version is in the file name, so a cached copy never outlives an upgrade.
HTMX_VERSION = "2.0.11"


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    """The app's template engine: Jinja over api/ui/templates, autoescape on."""
    return TemplateConfig(
        directory=HERE / "templates", engine=JinjaTemplateEngine, engine_callback=_configure
    )


def _configure(engine: JinjaTemplateEngine) -> None:
    add_filters(engine)
    engine.engine.globals["htmx_src"] = f"/ui/static/htmx-{HTMX_VERSION}.min.js"


def router() -> Router:
    """Every /ui route: pages and actions behind the session hook, sign-in and static
    files without it; HTML error pages; security headers; none in the OpenAPI schema."""
    return Router(
        path="/ui",
        route_handlers=[
            LoginController,
            PagesController,
            ActionsController,
            create_static_files_router(
                path="/static", directories=[HERE / "static"], opt=PUBLIC, include_in_schema=False
            ),
        ],
        before_request=require_session,
        after_request=security_headers,
        # Every class the app maps to problem+json, so each finds this handler first.
        exception_handlers=dict.fromkeys(exception_handlers(), error_page),
        include_in_schema=False,
    )
