"""API documentation pages that work offline: Swagger UI (`/docs`) and ReDoc (`/redoc`) from
assets vendored under app/static/docs (scripts/vendor_assets.py); the OpenAPI's bearer scheme,
which gives `/docs` its Authorize button, is declared by app/api/openapi.py."""

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = Path(__file__).resolve().parents[1] / "static" / "docs"
ASSETS_URL = "/static/docs"
# The pages may load nothing from elsewhere: offline they work the same, and ReDoc's sidebar
# logo (an image on Redocly's CDN) is not fetched. Inline script and styles are the pages' own
# (FastAPI's page templates, ReDoc's styled components); ReDoc searches in a blob: worker.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline';"
    " img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'"
)


def install_docs(application: FastAPI) -> None:
    """Serve the docs pages and their assets.

    The application must be created with `docs_url=None, redoc_url=None` (FastAPI's own pages
    load their scripts from a CDN)."""
    openapi_url = application.openapi_url or ""
    title = application.title
    router = APIRouter(include_in_schema=False)

    @router.get("/docs")
    async def swagger_ui() -> HTMLResponse:
        return _confined(
            get_swagger_ui_html(
                openapi_url=openapi_url,
                title=f"{title} - Swagger UI",
                swagger_js_url=f"{ASSETS_URL}/swagger-ui/swagger-ui-bundle.js",
                swagger_css_url=f"{ASSETS_URL}/swagger-ui/swagger-ui.css",
                swagger_favicon_url=f"{ASSETS_URL}/swagger-ui/favicon-32x32.png",
                oauth2_redirect_url="/docs/oauth2-redirect",
                # The key stays in the page across reloads, as a developer trying calls expects.
                swagger_ui_parameters={"persistAuthorization": True},
            )
        )

    @router.get("/docs/oauth2-redirect")
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @router.get("/redoc")
    async def redoc() -> HTMLResponse:
        return _confined(
            get_redoc_html(
                openapi_url=openapi_url,
                title=f"{title} - ReDoc",
                redoc_js_url=f"{ASSETS_URL}/redoc/redoc.standalone.js",
                redoc_favicon_url=f"{ASSETS_URL}/swagger-ui/favicon-32x32.png",
                with_google_fonts=False,
            )
        )

    application.include_router(router)
    application.mount(ASSETS_URL, StaticFiles(directory=ASSETS), name="docs-assets")


def _confined(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = DOCS_CSP
    return page
