"""The web app in headless Chromium against `licchavi serve --demo` (embedded database, broker
and worker): a new user opens the printed URL, compares two demo videos and sees the ranking
change after the auto run, starts a run and watches it succeed, submits a sweep and reads its
leaderboard; a refused action shows the API's problem. Every page passes axe-core's WCAG A/AA
rules, fits 360 px, and logs no console error. Screenshots go to the test output folder (and to
docs/screenshots with LICCHAVI_UPDATE_SCREENSHOTS=1, for the README)."""

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.browser_support import screenshot_path
from tests.conftest import REPO
from tests.helpers import free_port, stop, wait_for

pytestmark = pytest.mark.browser

AXE = REPO / "tests" / "browser" / "vendor" / "axe-core" / "axe.min.js"
SCREENSHOTS = REPO / "docs" / "screenshots"
SMALL_SWEEP = """name: browser sweep
parameters:
  w: {values: [0.5, 2]}
repeats: {seeds: [0]}
evaluation: {kind: holdout, folds: 2, split_by: comparison}
include_baseline: false
"""


@dataclass
class Served:
    url: str
    signin: str  # the URL `serve --demo` prints, which signs in as the demo user
    env: dict[str, str]

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "app.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    directory = tmp_path_factory.mktemp("web-app")
    env = {
        **os.environ,
        "DATA_DIR": str(directory / "data"),
        "AUTO_TRAIN_DELAY_SECONDS": "0.5",
        "SCORES_POINTER_TTL_SECONDS": "0",
        "SWEEP_SCHEDULER_INTERVAL_SECONDS": "0.2",
    }
    for name in ("DATABASE_URL", "CELERY_BROKER_URL"):
        env.pop(name, None)
    port = free_port()
    log = directory / "serve.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--demo"],
            env=env,
            cwd=directory,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        signin = wait_for(
            "serve --demo to print its sign-in URL",
            lambda: (
                (m := re.search(r"(http://\S+/#/signin\?credential=\S+)", log.read_text()))
                and m.group(1)
            ),
            120,
        )
        base = f"http://127.0.0.1:{port}"
        wait_for("the API", lambda: httpx.get(f"{base}/readyz").status_code == 200, 60)
        wait_for(
            "the demo's first scores",
            lambda: httpx.get(f"{base}/api/v1/scores").json()["run_id"],
            180,
        )
        yield Served(url=base, signin=signin, env=env)
    finally:
        stop(process)


@pytest.fixture
def browser_page(chromium: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A page whose console errors are kept, in a context that lets axe-core be injected."""
    context = chromium.new_context(bypass_csp=True, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    refused: list[str] = []
    # The browser logs every refused request as a console error too; those are kept apart, by
    # status and path, so a test can tell the refusals it caused from anything else.
    page.on(
        "console",
        lambda m: (
            m.type == "error"
            and not m.text.startswith("Failed to load resource")
            and errors.append(m.text)
        ),
    )
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on(
        "response",
        lambda r: (
            r.status >= 400
            and refused.append(f"{r.status} {r.request.method} {urlsplit(r.url).path}")
        ),
    )
    page.errors = errors
    page.refused = refused
    try:
        yield page
    finally:
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            page.screenshot(path=str(screenshot_path(request, "failure")), full_page=True)
        context.close()


def check_page(page: Any, request: pytest.FixtureRequest, name: str) -> None:
    """No accessibility violation, nothing wider than a phone, a screenshot kept."""
    page.add_script_tag(path=str(AXE))
    violations = page.evaluate(
        """async () => (await axe.run(document, {runOnly: ["wcag2a", "wcag2aa"]}))
            .violations.map((v) => `${v.id}: ${v.nodes.map((n) => n.target).join(" ")}`)"""
    )
    assert violations == [], violations
    path = screenshot_path(request, name)
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("LICCHAVI_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(exist_ok=True)
        shutil.copy(path, SCREENSHOTS / f"{name}.png")
    width = page.viewport_size["width"]
    page.set_viewport_size({"width": 360, "height": 740})
    overflow = page.evaluate("() => document.documentElement.scrollWidth")
    page.set_viewport_size({"width": width, "height": 900})
    assert overflow <= 360, f"{name} is {overflow} px wide on a 360 px screen"


def sign_in(page: Any, served: Served) -> None:
    page.goto(served.signin)
    page.wait_for_selector("text=Signed in as")
    assert "credential" not in page.url  # the credential leaves the address bar


def display_score(served: Served, video: str) -> float:
    scores = httpx.get(f"{served.url}/api/v1/videos/{video}/scores").json()["scores"]
    return next(s["display_score"] for s in scores if s["criterion"] == "largely_recommended")


def test_rankings_and_a_video_page_need_no_sign_in(
    served: Served, browser_page: Any, request: pytest.FixtureRequest
) -> None:
    page = browser_page
    page.goto(f"{served.url}/")
    page.wait_for_selector("table tbody tr")
    rows = page.locator("table tbody tr")
    assert rows.count() == 50
    first = rows.nth(0).locator("a").inner_text()
    check_page(page, request, "rankings")
    page.fill("input[name=min_contributors]", "3")
    page.click("text=Show")
    page.wait_for_url(re.compile(r"min_contributors=3"))
    page.click("text=Next")
    page.wait_for_selector("text=51–")
    page.goto(f"{served.url}/#/videos/{first}")
    page.wait_for_selector(".card .big")
    assert "contributors" in page.inner_text(".card")
    check_page(page, request, "video")
    assert (page.errors, page.refused) == ([], [])


def test_compare_two_videos_and_see_the_ranking_change(
    served: Served, browser_page: Any, request: pytest.FixtureRequest
) -> None:
    page = browser_page
    sign_in(page, served)
    videos = httpx.get(f"{served.url}/api/v1/scores", params={"limit": 2}).json()["items"]
    a, b = videos[0]["video_id"], videos[1]["video_id"]
    before = display_score(served, b)
    published = httpx.get(f"{served.url}/api/v1/scores", params={"limit": 1}).json()["run_id"]
    counted = httpx.get(f"{served.url}/api/v1/training-runs/{published}").json()["n_comparisons"]
    page.goto(f"{served.url}/#/compare?a={a}&b={b}")
    slider = page.locator("#score-largely_recommended")
    slider.focus()
    page.keyboard.press("End")  # keyboard only: B is much better
    assert slider.get_attribute("aria-valuetext") == "10: B is better"
    check_page(page, request, "compare")
    page.click("text=Submit comparison")
    page.wait_for_selector("text=Fresh scores published by", timeout=120_000)
    # The run the page names read the new comparison, and its scores are the ones now served.
    run_id = int(page.inner_text("[role=status] a").removeprefix("run #"))
    run = httpx.get(f"{served.url}/api/v1/training-runs/{run_id}").json()
    assert run["n_comparisons"] == counted + 1
    assert httpx.get(f"{served.url}/api/v1/scores", params={"limit": 1}).json()["run_id"] == run_id
    assert display_score(served, b) != before
    page.reload()
    page.wait_for_selector("text=Update comparison")  # the stored values are shown
    assert page.locator("#score-largely_recommended").input_value() == "10"
    page.goto(f"{served.url}/#/me")
    page.wait_for_selector(".scatter svg circle")
    check_page(page, request, "my-scores")
    assert (page.errors, page.refused) == ([], [])


def test_start_a_run_and_watch_it_succeed(
    served: Served, browser_page: Any, request: pytest.FixtureRequest
) -> None:
    page = browser_page
    sign_in(page, served)
    page.goto(f"{served.url}/#/runs")
    # A cold run: a warm start from the demo's converged auto run may need no iteration at all.
    page.uncheck("input[name=warm_start]")
    page.click("text=Start a run")
    page.wait_for_url(re.compile(r"#/runs/\d+$"))
    page.wait_for_selector(".status-succeeded", timeout=120_000)
    page.wait_for_selector(".chart canvas")  # the loss curves, drawn from the metrics history
    check_page(page, request, "run")
    page.goto(f"{served.url}/#/runs")
    page.wait_for_selector("table tbody tr")
    check_page(page, request, "runs")
    assert (page.errors, page.refused) == ([], [])


def test_submit_a_sweep_and_read_its_leaderboard(
    served: Served, browser_page: Any, request: pytest.FixtureRequest
) -> None:
    page = browser_page
    sign_in(page, served)
    page.goto(f"{served.url}/#/sweeps")
    page.fill("#spec", "name: [unclosed")
    page.wait_for_selector("#spec-check .problem")  # the dry run's refusal, shown inline
    page.fill("#spec", SMALL_SWEEP)
    page.wait_for_selector("text=2 trials × 2 evaluations = 4 evaluations")
    check_page(page, request, "sweeps")
    page.click("text=Submit sweep")
    page.wait_for_url(re.compile(r"#/sweeps/\d+"))
    page.wait_for_selector("text=Ranked by the lower end", timeout=180_000)
    page.wait_for_selector(".status-completed", timeout=180_000)
    page.wait_for_selector("img.plot")
    check_page(page, request, "sweep")
    assert page.errors == []
    # The only refusal is the dry run of the unreadable spec, which the page showed.
    assert set(page.refused) == {"422 POST /api/v1/sweeps"}, page.refused


def test_a_refused_action_shows_the_problem(
    served: Served, browser_page: Any, request: pytest.FixtureRequest
) -> None:
    page = browser_page
    reader = served.cli("api-key", "create", "--user", "reader", "--scopes", "scores:read_local")
    page.goto(f"{served.url}/#/signin?credential={reader}")
    page.wait_for_selector("text=Signed in as")
    page.goto(f"{served.url}/#/runs")
    page.click("text=Start a run")
    problem = page.wait_for_selector(".problem")
    assert "runs:write" in problem.inner_text()
    check_page(page, request, "refused")
    assert page.errors == []
    assert page.refused == ["403 POST /api/v1/training-runs"]
