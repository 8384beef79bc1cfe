"""Score endpoints on both databases, after runs trained by the real task in this process."""

import json
import math
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from app.comparisons.transfer import import_comparisons
from app.core.db import get_engine
from app.main import create_app
from app.runs.recovery import prune_superseded_scores
from tests.comparisons.test_comparisons import assert_problem
from tests.conftest import ApiClient, reset_caches
from workers.tasks.training import train_run

DEMO = Path(__file__).resolve().parents[2] / "app" / "demo" / "comparisons.csv"
SCORES = "/api/v1/scores"


@pytest.fixture
def trained(committed_database: str, monkeypatch: pytest.MonkeyPatch) -> ApiClient:
    monkeypatch.setenv("AUTO_TRAIN_ENABLED", "false")
    monkeypatch.setenv("SCORES_POINTER_TTL_SECONDS", "0")  # see each publication at once
    reset_caches()
    import_comparisons(get_engine(), DEMO)
    from sqlmodel import Session

    client = ApiClient(create_app(), lambda: Session(get_engine()))
    return client


def run_now(client: TestClient, headers: dict[str, str], **body: object) -> int:
    run_id = int(client.post("/api/v1/training-runs", json=body, headers=headers).json()["id"])
    assert train_run(run_id) == "succeeded"
    return run_id


def test_scores_of_the_published_run_and_of_any_succeeded_run(trained: ApiClient) -> None:
    client = trained
    assert client.get(SCORES).json()["run_id"] is None
    headers = client.key("runs:write")
    first = run_now(client, headers)
    page = client.get(SCORES, params={"limit": 10}).json()
    assert (page["run_id"], page["criterion"], page["total"], len(page["items"])) == (
        first,
        "largely_recommended",
        100,
        10,
    )
    for item in page["items"]:
        x = item["score"]
        assert item["display_score"] == pytest.approx(100 * x / math.sqrt(1 + x * x))
        assert item["run_id"] == first and item["n_contributors"] >= 1
    descending = client.get(SCORES, params={"limit": 100}).json()["items"]
    ascending = client.get(SCORES, params={"limit": 100, "order": "asc"}).json()["items"]
    assert [i["score"] for i in descending] == sorted(i["score"] for i in descending)[::-1]
    assert [i["video_id"] for i in ascending] == [i["video_id"] for i in descending][::-1]
    second_page = client.get(SCORES, params={"limit": 10, "offset": 10}).json()["items"]
    assert second_page == descending[10:20]
    popular = client.get(SCORES, params={"min_contributors": 10, "limit": 100}).json()
    assert 0 < popular["total"] < 100 and len(popular["items"]) == popular["total"]
    assert all(item["n_contributors"] >= 10 for item in popular["items"])
    assert_problem(client.get(SCORES, params={"criterion": "nope"}), 404)
    assert client.get(SCORES, params={"criterion": "pedagogy"}).json()["total"] == 0
    assert_problem(client.get(SCORES, params={"limit": 5000}), 422)

    # A second run (converged solver) is published; the first stays readable by id.
    second = run_now(client, headers, solver="converged")
    assert client.get(SCORES).json()["run_id"] == second
    old = client.get(SCORES, params={"run_id": first, "limit": 100}).json()
    assert old["run_id"] == first and old["items"] == descending
    queued = client.post("/api/v1/training-runs", json={}, headers=headers).json()["id"]
    assert_problem(client.get(SCORES, params={"run_id": queued}), 409)
    assert_problem(client.get(SCORES, params={"run_id": 10**9}), 404)

    top = descending[0]["video_id"]
    video = client.get(f"/api/v1/videos/{top}/scores").json()
    assert [(s["criterion"], s["run_id"]) for s in video["scores"]] == [
        ("largely_recommended", second)
    ]
    assert_problem(client.get("/api/v1/videos/yt:unknown/scores"), 404)

    with get_engine().connect() as connection:
        compared = connection.execute(
            text(
                "SELECT count(DISTINCT v) FROM (SELECT video_a_id AS v, user_id FROM comparisons"
                " UNION ALL SELECT video_b_id, user_id FROM comparisons) s"
                " JOIN users u ON u.id = s.user_id WHERE u.external_id = 'user00000'"
            )
        ).scalar_one()
    assert_problem(client.get("/api/v1/users/user00000/scores"), 401)
    assert_problem(
        client.get("/api/v1/users/user00000/scores", headers=client.key("runs:write")), 403
    )
    local = client.get(
        "/api/v1/users/user00000/scores",
        params={"limit": 1000},
        headers=client.key("scores:read_local"),
    ).json()
    assert local["total"] == compared == len(local["items"])
    assert {item["run_id"] for item in local["items"]} == {second}
    assert_problem(
        client.get("/api/v1/users/nobody/scores", headers=client.key("scores:read_local")), 404
    )

    history = client.get(f"/api/v1/training-runs/{first}/metrics").json()["items"]
    assert [row["epoch"] for row in history] == list(range(1, len(history) + 1))
    for plot in ("loss", "scores"):
        png = client.get(f"/api/v1/training-runs/{first}/plots/{plot}.png")
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        assert png.content.startswith(b"\x89PNG")

    # Superseded runs' scores are pruned; the published run's never are.
    assert prune_superseded_scores(get_engine(), runs_kept=1) == [first]
    assert prune_superseded_scores(get_engine(), runs_kept=1) == []
    assert_problem(client.get(SCORES, params={"run_id": first}), 410)
    assert client.get(SCORES).json()["total"] == 100


def test_a_published_pointer_past_its_time_to_live_is_re_read_off_the_request_path(
    trained: ApiClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.core.config import get_settings
    from app.scores import pages as score_pages

    monkeypatch.setenv("SCORES_POINTER_TTL_SECONDS", "2")
    get_settings.cache_clear()
    client = trained
    headers = client.key("runs:write")
    first = run_now(client, headers)
    assert client.get(SCORES).json()["run_id"] == first  # read now: remembered for 2 s
    second = run_now(client, headers)
    assert client.get(SCORES).json()["run_id"] == first  # within the time to live

    database = str(get_engine().url)
    criterion = score_pages._CRITERIA.values[(database, "largely_recommended")][0]
    read_at = score_pages._POINTERS[(database, criterion)][0]
    time.sleep(max(0.0, read_at + 2.2 - time.monotonic()))
    # Past the time to live but within twice it: still answered from memory, and one
    # background thread re-reads the pointer and loads the new run's ranking.
    assert client.get(SCORES).json()["run_id"] == first
    deadline = time.monotonic() + 30
    while score_pages._POINTERS[(database, criterion)][1] != second:
        assert time.monotonic() < deadline, "the pointer was not re-read"
        time.sleep(0.05)
    assert (database, second, criterion, 0) in score_pages._RANKINGS.values
    # The new run's pages are rendered from memory, with no query and no thread.
    page = score_pages.cached_global_scores(
        database=database,
        criterion=None,
        order="desc",
        limit=7,
        offset=3,
        min_contributors=0,
    )
    assert page is not None and json.loads(page)["run_id"] == second
    assert (
        json.loads(page)["items"]
        == client.get(SCORES, params={"limit": 7, "offset": 3}).json()["items"]
    )
