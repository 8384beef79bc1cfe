"""Bulk ingest: JSON lists and public-dataset CSV, all-or-nothing with per-row errors."""

from tests.comparisons.test_comparisons import WRITE, assert_problem, payload
from tests.conftest import ApiClient


def test_bulk_json_counts_inserted_updated_unchanged(client: ApiClient) -> None:
    auth = client.key(WRITE)
    rows = [payload(user=f"u{i}", a="yt:a", b=f"yt:b{i}") for i in range(20)]
    first = client.post("/api/v1/comparisons/bulk", json=rows, headers=auth)
    assert first.json() == {"inserted": 20, "updated": 0, "unchanged": 0}
    rows[0] = payload(user="u0", a="yt:b0", b="yt:a", largely_recommended=-6)  # same, reversed
    rows[1] = payload(user="u1", a="yt:a", b="yt:b1", largely_recommended=-1)  # changed
    rows.append(payload(user="new", a="yt:a", b="yt:b0"))
    second = client.post("/api/v1/comparisons/bulk", json=rows, headers=auth)
    assert second.json() == {"inserted": 1, "updated": 1, "unchanged": 19}


def test_bulk_json_with_one_bad_row_stores_nothing(client: ApiClient) -> None:
    auth = client.key(WRITE)
    rows = [payload(user=f"u{i}", a="yt:a", b=f"yt:b{i}") for i in range(5)]
    rows[3] = payload(user="u3", largely_recommended=99)
    rows.append(payload(user="u9", no_such_criterion=1))
    problem = assert_problem(client.post("/api/v1/comparisons/bulk", json=rows, headers=auth), 422)
    assert {e["row"] for e in problem["errors"]} == {3, 5}
    assert client.get("/api/v1/comparisons").json()["total"] == 0


def test_bulk_csv_in_public_dataset_format(client: ApiClient) -> None:
    auth = {**client.key(WRITE), "content-type": "text/csv"}
    csv_body = (
        "public_username,video_a,video_b,criteria,score,week_date\n"
        "alice,vid1,vid2,largely_recommended,5,2024-01-01\n"
        "alice,vid2,vid1,importance,-3,2024-01-01\n"
        "bob,vid1,vid3,largely_recommended,0,2024-01-08\n"
    )
    assert client.post("/api/v1/comparisons/bulk", content=csv_body, headers=auth).json() == {
        "inserted": 3,
        "updated": 0,
        "unchanged": 0,
    }
    stored = client.get("/api/v1/comparisons/alice/vid1/vid2").json()["criteria_scores"]
    assert {s["criterion"]: s["score"] for s in stored} == {
        "importance": 3,
        "largely_recommended": 5,
    }
    with_max = "public_username,video_a,video_b,criteria,score,score_max\nalice,vid1,vid2,largely_recommended,5,10\n"
    assert (
        client.post("/api/v1/comparisons/bulk", content=with_max, headers=auth).json()["unchanged"]
        == 1
    )


def test_bulk_csv_with_bad_rows_imports_nothing_and_names_rows(client: ApiClient) -> None:
    auth = {**client.key(WRITE), "content-type": "text/csv"}
    csv_body = (
        "public_username,video_a,video_b,criteria,score\n"
        "alice,vid1,vid2,largely_recommended,5\n"
        "alice,vid1,vid1,largely_recommended,5\n"
        "alice,vid1,vid3,largely_recommended,eleven\n"
        "alice,vid1,vid4,largely_recommended,12\n"
        "alice,vid1,vid5,unknown,1\n"
    )
    problem = assert_problem(
        client.post("/api/v1/comparisons/bulk", content=csv_body, headers=auth), 422
    )
    assert [(e["row"], e["field"]) for e in problem["errors"]] == [
        (2, "video_b"),
        (3, "score"),
        (4, "score"),
        (5, "criteria"),
    ]
    assert "2, 3, 4, 5" in problem["detail"]
    # Numbers and dates as exports write them: not what Python's float() and fromisoformat()
    # also read (digit separators, other scripts' and full-width digits, compact dates).
    loose = (
        "public_username,video_a,video_b,criteria,score,week_date\n"
        "alice,vid1,vid2,largely_recommended,1_0,\n"
        "alice,vid1,vid3,largely_recommended,\u0663,\n"
        "alice,vid1,vid4,largely_recommended,\uff11,\n"
        "alice,vid1,vid5,largely_recommended,-1.5e0,20210125\n"
        "alice,vid1,vid6,largely_recommended,+.5,2021-01-25\n"
    )
    problem = assert_problem(
        client.post("/api/v1/comparisons/bulk", content=loose.encode(), headers=auth), 422
    )
    assert [(e["row"], e["field"]) for e in problem["errors"]] == [
        (1, "score"),
        (2, "score"),
        (3, "score"),
        (4, "week_date"),
    ]
    assert client.get("/api/v1/comparisons").json()["total"] == 0
    missing_column = "public_username,video_a,video_b,score\nalice,vid1,vid2,5\n"
    assert (
        "criteria"
        in assert_problem(
            client.post("/api/v1/comparisons/bulk", content=missing_column, headers=auth), 422
        )["detail"]
    )


def test_bulk_limits_and_media_types(client: ApiClient) -> None:
    auth = client.key(WRITE)
    too_many = [payload(user=f"u{i}") for i in range(10_001)]
    assert_problem(client.post("/api/v1/comparisons/bulk", json=too_many, headers=auth), 413)
    assert_problem(
        client.post("/api/v1/comparisons/bulk", json={"not": "a list"}, headers=auth), 422
    )
    assert_problem(
        client.post(
            "/api/v1/comparisons/bulk",
            content=b"x",
            headers={**auth, "content-type": "application/xml"},
        ),
        415,
    )
    assert_problem(
        client.post(
            "/api/v1/comparisons/bulk",
            content=b"\xff\xfe",
            headers={**auth, "content-type": "text/csv"},
        ),
        422,
    )
    assert_problem(client.post("/api/v1/comparisons/bulk", json=[]), 401)
    assert client.get("/api/v1/comparisons").json()["total"] == 0


def test_bulk_names_that_sort_apart_or_look_like_null_keep_their_ids(client: ApiClient) -> None:
    auth = client.key(WRITE)
    # Code-point order puts "Z" before "a" and "é" after "z", unlike most collations; "NULL" and
    # "null" are names like any other.
    videos = ["yt:a", "yt:Z", "yt:é", "yt:z", "yt:NULL", "yt:ab", "yt:a.b"]
    users = ["NULL", "null", "Émile", "zoé", "Zed", "a@b.c"]
    rows = [
        payload(user=user, a=videos[i % len(videos)], b=videos[(i + 1 + j) % len(videos)])
        for i, user in enumerate(users)
        for j in range(3)
    ]
    expected = {
        (row["user_id"], *sorted((row["video_a"], row["video_b"])))
        for row in rows
        if row["video_a"] != row["video_b"]
    }
    rows = [row for row in rows if row["video_a"] != row["video_b"]]
    response = client.post("/api/v1/comparisons/bulk", json=rows, headers=auth)
    assert response.json() == {"inserted": len(expected), "updated": 0, "unchanged": 0}
    listed = client.get("/api/v1/comparisons", params={"limit": 500}).json()["items"]
    assert {(item["user_id"], item["video_a"], item["video_b"]) for item in listed} == expected
    single = client.post(
        "/api/v1/comparisons", json=payload(user="NULL", a="yt:é", b="yt:Z"), headers=auth
    )
    assert single.status_code in (200, 201)
    assert (
        client.get("/api/v1/comparisons/NULL/yt:é/yt:Z").json()["criteria_scores"][0]["score"] == 6
    )
