"""Serves the web app: its page at `/` and its assets (and the vendored libraries) as static files.

No build step: the page loads plain JavaScript modules from `app/static/web` and uPlot from
`app/static/vendor` (scripts/vendor_assets.py pins it). Routing happens in the page (`#/…`), so
the server needs one route; everything the page shows comes from `/api/v1`.
"""

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parents[1] / "static"
# Nothing is loaded from elsewhere and no inline script runs; uPlot sets inline styles.
WEB_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:;"
    " connect-src 'self'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)


def install_web_app(application: FastAPI) -> None:
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    async def index() -> FileResponse:
        return FileResponse(
            STATIC / "web" / "index.html",
            headers={"Content-Security-Policy": WEB_CSP, "Cache-Control": "no-cache"},
        )

    application.include_router(router)
    application.mount("/static/web", StaticFiles(directory=STATIC / "web"), name="web-assets")
    application.mount(
        "/static/vendor", StaticFiles(directory=STATIC / "vendor"), name="vendor-assets"
    )
