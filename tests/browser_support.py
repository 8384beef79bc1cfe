"""Browser test fixtures: Debian's Chromium driven by Playwright, the API served by uvicorn in a
subprocess, and static pages served from another origin (another port).

Playwright's own browser downloads are never used: Chromium is launched by its path. CI installs
it (`.ci/run`); where it is missing a browser test fails in CI and is skipped elsewhere. Import
the fixtures in a conftest (tests/browser/conftest.py does) to use them.
"""

import functools
import http.server
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REPO, service_missing
from tests.helpers import free_port, stop, wait_for

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
# Screenshots and other artefacts a person may want to look at after a run.
OUTPUT_DIR = Path(os.environ.get("TEST_OUTPUT_DIR", REPO / "test-output")) / "browser"


@dataclass
class ApiServer:
    """The API in a uvicorn subprocess; `url` is its origin."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)


def serve_api(env: dict[str, str], log: Path) -> ApiServer:
    """Start `uvicorn --factory app.main:serve_app` with `env` added to this process's
    environment (the database must be migrated already) and wait until it answers."""
    port = free_port()
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "app.main:serve_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env={**os.environ, **env},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    server = ApiServer(url=f"http://127.0.0.1:{port}", process=process, log=log)
    try:
        with server.client() as client:
            wait_for(
                "the API to answer",
                lambda: process.poll() is None and client.get("/healthz").status_code == 200,
                60,
            )
    except AssertionError:
        stop(process)
        raise AssertionError(f"the API did not start; its log:\n{log.read_text()}") from None
    return server


@dataclass(frozen=True)
class IdentityProvider:
    """A frontend's identity provider as the service sees it: an HS256 secret, an issuer and an
    audience (the JWT_* settings); it signs its users in with `token`."""

    secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    issuer: str = "https://idp.test"
    audience: str = "licchavi-api"

    def settings(self) -> dict[str, str]:
        return {"JWT_SECRET": self.secret, "JWT_ISSUER": self.issuer, "JWT_AUDIENCE": self.audience}

    def token(self, user: str, scope: str = "comparisons:write scores:read_local") -> str:
        import jwt

        now = int(time.time())
        claims = {
            "sub": user,
            "iss": self.issuer,
            "aud": self.audience,
            "iat": now,
            "exp": now + 600,
            "scope": scope,
        }
        return jwt.encode(claims, self.secret, algorithm="HS256")


@dataclass
class StaticSite:
    """Files served over HTTP from a directory on a port of their own: another origin."""

    url: str
    directory: Path
    _server: http.server.ThreadingHTTPServer = field(repr=False)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # the test's own assertions say what was fetched


def serve_static(directory: Path) -> StaticSite:
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(directory))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    # `localhost`, not 127.0.0.1: a different host and port than the API's, as a real
    # frontend's origin would be.
    return StaticSite(
        url=f"http://localhost:{server.server_address[1]}", directory=directory, _server=server
    )


def screenshot_path(request: pytest.FixtureRequest, name: str) -> Path:
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    test = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    return OUTPUT_DIR / f"{test}-{name}.png"


@pytest.fixture(scope="package")
def chromium() -> Iterator[Any]:
    """Headless Chromium (Debian's), one for the browser tests' folder. Playwright's sync API runs
    an event loop in the main thread while it is open; it stops with that folder's last test, so
    the tests after it can run their own (`anyio.run`)."""
    if not Path(CHROMIUM).is_file():
        service_missing("Chromium", FileNotFoundError(f"{CHROMIUM} (apt-get install chromium)"))
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        service_missing("Playwright", exc)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(chromium: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh browser context and page; on failure a screenshot of it is kept."""
    context = chromium.new_context()
    page = context.new_page()
    console: list[str] = []
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    page.console_messages = console  # read by tests that explain a failure
    failed_requests: list[str] = []
    page.on(
        "requestfailed",
        lambda failed: failed_requests.append(f"{failed.method} {failed.url}: {failed.failure}"),
    )
    page.failed_requests = failed_requests  # a request the browser refused or could not send
    try:
        yield page
    finally:
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            page.screenshot(path=str(screenshot_path(request, "failure")), full_page=True)
        context.close()


@pytest.fixture
def static_site(tmp_path: Path) -> Iterator[StaticSite]:
    """An empty directory served from its own origin; tests copy their pages into it."""
    directory = tmp_path / "site"
    directory.mkdir()
    site = serve_static(directory)
    yield site
    site.close()
