"""`/docs` and `/redoc` in headless Chromium with every request off the service refused (as
offline, or behind a strict network policy): they render the operations, not a blank page, and
Swagger UI offers the Authorize button of the bearer scheme."""

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser_support import ApiServer, screenshot_path, serve_api
from tests.conftest import REPO, migrate
from tests.helpers import stop

pytestmark = pytest.mark.browser


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ApiServer]:
    data = tmp_path / "served"
    data.mkdir()
    migrate(f"sqlite:///{data / 'licchavi.sqlite3'}")
    server = serve_api({"DATA_DIR": str(data)}, tmp_path / "api.log")
    yield server
    stop(server.process)


def offline(page: Any, origin: str) -> list[str]:
    """Refuse every request the page makes outside `origin`; returns the refused URLs."""
    refused: list[str] = []

    def route(request_route: Any) -> None:
        url = request_route.request.url
        if url.startswith(origin + "/"):
            request_route.continue_()
        else:
            refused.append(url)
            request_route.abort()

    page.route("**/*", route)
    return refused


def test_swagger_ui_shows_the_operations_and_authorize_offline(
    api: ApiServer, page: Any, request: pytest.FixtureRequest
) -> None:
    refused = offline(page, api.url)
    page.goto(f"{api.url}/docs")
    page.wait_for_selector(".opblock", timeout=30_000)
    shot = screenshot_path(request, "swagger-ui")
    page.screenshot(path=str(shot), full_page=True)
    summaries = page.locator(".opblock-summary-path").all_inner_texts()
    assert "/api/v1/comparisons" in [text.replace("\u200b", "") for text in summaries]
    assert len(summaries) >= 20, summaries
    # The bearer scheme gives the page its Authorize button and locks the secured operations.
    assert page.locator("button.authorize").count() == 1
    assert page.locator(".opblock .authorization__btn").count() >= 10
    assert refused == []
    assert shot.stat().st_size > 10_000  # a rendered page, not a blank one


def test_redoc_shows_the_operations_offline(
    api: ApiServer, page: Any, request: pytest.FixtureRequest
) -> None:
    refused = offline(page, api.url)
    page.goto(f"{api.url}/redoc")
    page.wait_for_selector("text=Store a comparison", timeout=30_000)
    page.screenshot(path=str(screenshot_path(request, "redoc")), full_page=False)
    body = page.inner_text("body")
    assert "Licchavi scoring service" in body
    assert "authorizations:\nbearerauth" in body.lower(), body  # the secured operations
    assert refused == [], refused


def test_the_vendored_assets_are_those_the_script_pinned() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "vendor_assets.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
