"""End to end in headless Chromium: the README's example page (docs/examples/browser.html),
served from another origin, posts a comparison with a user's credential (a user key, or a JWT
from the frontend's identity provider) through CORS and reads the published scores; it cannot
post as another user; a page from an origin not listed cannot post at all; a 429 is readable."""

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session

from app.comparisons.transfer import import_comparisons
from app.core.config import get_settings
from app.core.db import get_engine
from app.identity.security import create_api_key
from tests.browser_support import (
    ApiServer,
    IdentityProvider,
    StaticSite,
    screenshot_path,
    serve_api,
    serve_static,
)
from tests.conftest import REPO, migrate, reset_caches
from tests.helpers import stop, wait_for
from workers.tasks.training import train_run

pytestmark = pytest.mark.browser

EXAMPLE = REPO / "docs" / "examples" / "browser.html"
DEMO = REPO / "app" / "demo" / "comparisons.csv"


def key(*scopes: str, user: str | None = None) -> str:
    with Session(get_engine()) as session:
        _row, secret = create_api_key(session, name="frontend", scopes=list(scopes), user_id=user)
        session.commit()
    return secret


@pytest.fixture
def idp() -> IdentityProvider:
    return IdentityProvider()


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The embedded database with the demo comparisons and one published run of their scores;
    the settings the served API shares with this process."""
    settings = {
        "AUTO_TRAIN_ENABLED": "false",
        "SCORES_POINTER_TTL_SECONDS": "0",
        "DATA_DIR": str(get_settings().data_dir.resolve()),
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    reset_caches()
    get_settings().ensure_data_dir()
    migrate(get_settings().resolved_database_url)
    import_comparisons(get_engine(), DEMO)
    return settings


@pytest.fixture
def frontend(static_site: StaticSite) -> StaticSite:
    shutil.copy(EXAMPLE, static_site.directory / "index.html")
    return static_site


@pytest.fixture
def api(
    published: dict[str, str], frontend: StaticSite, idp: IdentityProvider, tmp_path: Path
) -> Iterator[ApiServer]:
    server = serve_api(
        {
            **published,
            **idp.settings(),
            "CORS_ALLOW_ORIGINS": frontend.url,
            "RATE_LIMIT_ENABLED": "true",
            "RATE_LIMIT_WRITES": "2/minute",
        },
        tmp_path / "api.log",
    )
    yield server
    stop(server.process)


def publish_a_run(api: ApiServer) -> int:
    with api.client(headers={"Authorization": f"Bearer {key('runs:write')}"}) as client:
        created = client.post("/api/v1/training-runs", json={})
        assert created.status_code == 202, created.text
        run_id = int(created.json()["id"])
    # The real training task, in this process, on the database the API serves.
    assert train_run(run_id) == "succeeded"
    return run_id


def submit(page: Any, api: ApiServer, token: str, **fields: str) -> None:
    page.fill("input[name=api]", api.url)
    page.fill("input[name=token]", token)
    for name, value in fields.items():
        page.fill(f"input[name={name}]", value)
    page.click("button")


def output(page: Any) -> list[str]:
    return [line for line in page.inner_text("#out").splitlines() if line]


def test_the_readme_page_posts_with_a_user_key_and_reads_the_scores(
    api: ApiServer, frontend: StaticSite, page: Any, request: pytest.FixtureRequest
) -> None:
    run_id = publish_a_run(api)
    token = key("comparisons:write", user="alice")
    page.goto(f"{frontend.url}/index.html")
    # No user named: the key's own.
    submit(page, api, token, a="yt:browser-a", b="yt:browser-b", score="7")
    wait_for("the page to list the scores", lambda: len(output(page)) >= 6, 30)
    page.screenshot(path=str(screenshot_path(request, "posted")), full_page=True)
    lines = output(page)
    assert lines[0] == "POST 201: 1 created", (lines, page.console_messages)
    with api.client() as client:
        stored = client.get("/api/v1/comparisons/alice/yt:browser-a/yt:browser-b")
        assert stored.status_code == 200
        assert stored.json()["criteria_scores"][0]["score"] == 7
        top = client.get("/api/v1/scores", params={"limit": 5}).json()
    assert top["run_id"] == run_id and len(top["items"]) == 5
    assert lines[1:] == [
        f"{item['video_id']}  {item['display_score']:.1f}" for item in top["items"]
    ]

    # The third write of this credential within the minute is refused, and the page can read
    # the problem and its Retry-After (an exposed header).
    submit(page, api, token, b="yt:browser-c")
    wait_for("the second post", lambda: len(output(page)) >= 12, 30)
    submit(page, api, token, b="yt:browser-d")
    wait_for("the third post", lambda: len(output(page)) >= 18, 30)
    third = output(page)[12]
    assert third.startswith("POST 429: Rate limit of 2 per 1 minute for writes reached"), third
    retry_after = page.evaluate(
        """async ([api, token]) => (await fetch(`${api}/api/v1/comparisons`, {
            method: "POST", body: "{}",
            headers: {"Authorization": `Bearer ${token}`, "Content-Type": "application/json"},
        })).headers.get("Retry-After")""",
        [api.url, token],
    )
    assert retry_after is not None and 1 <= int(retry_after) <= 60


def test_signed_in_with_a_jwt_the_page_posts_as_its_user_only(
    api: ApiServer,
    frontend: StaticSite,
    idp: IdentityProvider,
    page: Any,
    request: pytest.FixtureRequest,
) -> None:
    run_id = publish_a_run(api)
    token = idp.token("carol")  # what the frontend gets when carol signs in
    page.goto(f"{frontend.url}/index.html")
    submit(page, api, token, a="yt:jwt-a", b="yt:jwt-b", score="-3")
    wait_for("the page to list the scores", lambda: len(output(page)) >= 6, 30)
    assert output(page)[0] == "POST 201: 1 created", (output(page), page.console_messages)
    # Naming another user is refused, and the page reads why.
    submit(page, api, token, user="dave", a="yt:jwt-a", b="yt:jwt-c")
    wait_for("the second answer", lambda: len(output(page)) >= 12, 30)
    page.screenshot(path=str(screenshot_path(request, "jwt")), full_page=True)
    lines = output(page)
    assert lines[6] == "POST 403: This credential acts for user 'carol' only, not 'dave'.", lines
    with api.client() as client:
        mine = client.get("/api/v1/comparisons/carol/yt:jwt-a/yt:jwt-b")
        assert mine.status_code == 200
        assert mine.json()["criteria_scores"][0]["score"] == -3
        assert client.get("/api/v1/comparisons/dave/yt:jwt-a/yt:jwt-c").status_code == 404
        top = client.get("/api/v1/scores", params={"limit": 5}).json()
    assert top["run_id"] == run_id
    expected = [f"{item['video_id']}  {item['display_score']:.1f}" for item in top["items"]]
    assert lines[1:6] == expected and lines[7:12] == expected


def refused(page: Any, api: ApiServer) -> bool:
    """Whether Chromium refused the page's POST to the API (its console line or the failed
    request). Playwright's sync API delivers page events only inside its own calls: a short wait
    on the page lets them in, where a plain sleep between checks never would."""
    page.wait_for_timeout(100)
    return any("CORS policy" in message for message in page.console_messages) or any(
        failed.startswith(f"POST {api.url}") for failed in page.failed_requests
    )


def test_a_page_from_an_origin_not_listed_cannot_post(
    api: ApiServer, frontend: StaticSite, page: Any, request: pytest.FixtureRequest
) -> None:
    elsewhere = serve_static(frontend.directory)  # the same page, from another port
    try:
        page.goto(f"{elsewhere.url}/index.html")
        submit(page, api, key("comparisons:write", user="alice"), a="yt:other-a", b="yt:other-b")
        wait_for("the browser to refuse the request", lambda: refused(page, api), 30)
        page.screenshot(path=str(screenshot_path(request, "refused")), full_page=True)
    finally:
        elsewhere.close()
    assert output(page) == []
    with api.client() as client:
        assert client.get("/api/v1/comparisons/alice/yt:other-a/yt:other-b").status_code == 404
