"""Export → import → export gives the same bytes, every id the API accepts included, and the
public dataset's `week_date` survives; JSON, CSV upload and `licchavi import` share one id rule."""

import itertools
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from app.core.config import get_settings
from app.core.db import get_engine
from app.identity.security import create_api_key
from app.main import create_app
from tests.cli.test_transfer import TINY
from tests.conftest import ApiClient, create_database, drop_database, migrate, reset_caches

ACCEPTED_USERS = ["alice", "josé", "日本語", "user.name@x+y-z:1", "Ω_2", "x" * 150, "٣٤"]
ACCEPTED_VIDEOS = ["yt:dQw4w9WgXcQ", "v.1-2_3", "视频:一", "ü"]
REFUSED_USERS = ["jose\u0301", "a\u200db", "a b", "a/b", "x" * 151, "tab\tbed", "é\u0300"]
REFUSED_VIDEOS = ["yt:a\u200d", "yt:a@b", "e\u0301", "x" * 101]


def licchavi(*args: str, database: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "DATABASE_URL": database},
    )


def post_through_the_api(rows: list[dict[str, object]]) -> None:
    with TestClient(create_app()) as client:
        with Session(get_engine()) as session:
            _row, key = create_api_key(session, name="t", scopes=["comparisons:write"])
            session.commit()
        for row in rows:
            response = client.post(
                "/api/v1/comparisons", json=row, headers={"Authorization": f"Bearer {key}"}
            )
            assert response.status_code == 201, response.text


def second_database(backend: str, tmp_path: Path) -> tuple[str, object]:
    if backend == "postgres":
        return create_database("licchavi_reimport")
    url = f"sqlite:///{tmp_path / 'second.sqlite3'}"
    migrate(url)
    return url, None


def test_export_then_import_gives_the_same_bytes(
    committed_database: str, backend: str, tmp_path: Path
) -> None:
    rows: list[dict[str, object]] = []
    for i, user in enumerate(ACCEPTED_USERS):
        for j, (a, b) in enumerate(itertools.pairwise(ACCEPTED_VIDEOS)):
            scores = [{"criterion": "largely_recommended", "score": (i - j) * 0.75}]
            if j % 2:
                scores.append({"criterion": "importance", "score": -3.5, "score_max": 7})
            rows.append({"user_id": user, "video_a": a, "video_b": b, "criteria_scores": scores})
    post_through_the_api(rows)
    # And rows that carry their own week, as an import of Tournesol's export does.
    dated = tmp_path / "dated.csv"
    dated.write_text(
        "public_username,video_a,video_b,criteria,score,week_date\n"
        "weekly,yt:b,yt:a,largely_recommended,-10,2021-01-11\n"
        "weekly,yt:c,yt:a,importance,2.25,2023-12-25\n",
        encoding="utf-8",
    )
    assert licchavi("import", str(dated), database=committed_database).returncode == 0

    first = licchavi("export", str(tmp_path / "first"), database=committed_database)
    assert first.returncode == 0, first.stderr
    exported = (tmp_path / "first" / "comparisons.csv").read_bytes()
    assert exported.count(b"\n") == 1 + 2 + sum(
        len(row["criteria_scores"])  # type: ignore[arg-type]
        for row in rows
    )
    assert b"weekly,yt:a,yt:b,largely_recommended,10,10,2021-01-11\n" in exported
    assert b"weekly,yt:a,yt:c,importance,-2.25,10,2023-12-25\n" in exported

    url, admin = second_database(backend, tmp_path)
    try:
        imported = licchavi(
            "import", str(tmp_path / "first" / "comparisons.csv"), "--strict", database=url
        )
        assert imported.returncode == 0, imported.stderr
        assert "rejected 0" in imported.stdout
        again = licchavi("export", str(tmp_path / "again"), database=url)
        assert again.returncode == 0, again.stderr
        assert (tmp_path / "again" / "comparisons.csv").read_bytes() == exported
    finally:
        if admin is not None:
            reset_caches()
            drop_database(url, admin)  # type: ignore[arg-type]


def test_json_csv_and_import_agree_on_every_id(client: ApiClient, tmp_path: Path) -> None:
    auth = client.key("comparisons:write")
    cases = [(user, "yt:aaa", "yt:bbb") for user in ACCEPTED_USERS + REFUSED_USERS]
    cases += [("alice", video, "yt:zzz") for video in ACCEPTED_VIDEOS + REFUSED_VIDEOS]
    for user, a, b in cases:
        expected = user not in REFUSED_USERS and a not in REFUSED_VIDEOS
        payload = {
            "user_id": user,
            "video_a": a,
            "video_b": b,
            "criteria_scores": [{"criterion": "largely_recommended", "score": 1}],
        }
        as_json = client.post("/api/v1/comparisons", json=payload, headers=auth)
        assert as_json.status_code == (201 if expected else 422), (user, a, as_json.text)
        csv_line = f"public_username,video_a,video_b,criteria,score\n{user},{a},{b},largely_recommended,2\n"
        as_csv = client.post(
            "/api/v1/comparisons/bulk",
            content=csv_line.encode(),
            headers={**auth, "content-type": "text/csv"},
        )
        assert as_csv.status_code == (200 if expected else 422), (user, a, as_csv.text)
    settings = get_settings()
    assert settings.resolved_database_url  # the CLI reads the same database as the client


def test_a_week_date_that_is_not_a_monday_is_refused(client: ApiClient) -> None:
    auth = client.key("comparisons:write")
    body = (
        "public_username,video_a,video_b,criteria,score,week_date\n"
        "alice,yt:a,yt:b,largely_recommended,1,2024-01-01\n"
        "alice,yt:a,yt:c,largely_recommended,1,2024-01-03\n"
        "alice,yt:b,yt:c,largely_recommended,1,last week\n"
    )
    response = client.post(
        "/api/v1/comparisons/bulk",
        content=body.encode(),
        headers={**auth, "content-type": "text/csv"},
    )
    assert response.status_code == 422
    problem = response.json()
    assert [(e["row"], e["field"]) for e in problem["errors"]] == [
        (2, "week_date"),
        (3, "week_date"),
    ]
    assert client.get("/api/v1/comparisons?user_id=alice").json()["total"] == 0


@pytest.mark.slow
def test_tournesol_week_dates_survive_import_and_export(
    committed_database: str, tmp_path: Path
) -> None:
    assert licchavi("import", str(TINY), database=committed_database).returncode == 0
    exported = licchavi("export", str(tmp_path / "out"), database=committed_database)
    assert exported.returncode == 0, exported.stderr

    def weeks(lines: list[str], columns: list[str]) -> dict[tuple[str, ...], str]:
        at = {name: columns.index(name) for name in columns}
        found = {}
        for line in lines:
            field = line.split(",")
            pair = sorted((field[at["video_a"]], field[at["video_b"]]))
            key = (field[at["public_username"]], *pair, field[at["criteria"]])
            found[key] = field[at["week_date"]]
        return found

    with zipfile.ZipFile(TINY) as archive:
        original = archive.read("comparisons.csv").decode("utf-8-sig").splitlines()
    ours = (tmp_path / "out" / "comparisons.csv").read_text().splitlines()
    expected = weeks(original[1:], original[0].split(","))
    assert weeks(ours[1:], ours[0].split(",")) == expected
    assert len(set(expected.values())) > 50  # the file spans three years of weeks
