"""Comparison endpoints on PostgreSQL and on the embedded SQLite default."""

from typing import Any

from tests.conftest import ApiClient

WRITE = "comparisons:write"


def payload(
    user: str = "alice", a: str = "yt:aaa", b: str = "yt:bbb", **scores: float
) -> dict[str, Any]:
    scores = scores or {"largely_recommended": 6}
    return {
        "user_id": user,
        "video_a": a,
        "video_b": b,
        "criteria_scores": [{"criterion": c, "score": s} for c, s in scores.items()],
    }


def assert_problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status
    assert body["type"].startswith("https://")
    assert body["title"] and body["detail"] and body["instance"]
    return body


def test_create_then_repost_in_either_order_updates_one_row(client: ApiClient) -> None:
    auth = client.key(WRITE)
    first = client.post(
        "/api/v1/comparisons", json=payload(largely_recommended=6, importance=-2), headers=auth
    )
    assert first.status_code == 201
    assert first.json()["created"] == 2

    # Same pair reversed with the signs flipped: the same judgement, nothing changes.
    same = client.post(
        "/api/v1/comparisons",
        json=payload(a="yt:bbb", b="yt:aaa", largely_recommended=-6),
        headers=auth,
    )
    assert same.status_code == 200
    assert same.json()["criteria_scores"][0]["status"] == "unchanged"

    changed = client.post(
        "/api/v1/comparisons",
        json=payload(a="yt:bbb", b="yt:aaa", largely_recommended=3),
        headers=auth,
    )
    assert changed.status_code == 200
    assert changed.json()["updated"] == 1

    listing = client.get("/api/v1/comparisons", params={"user_id": "alice"}).json()
    assert listing["total"] == 2
    stored = {row["criterion"]: row for row in listing["items"]}
    # Stored sorted (yt:aaa < yt:bbb): the reversed post's +3 for yt:aaa is -3 here.
    assert (stored["largely_recommended"]["video_a"], stored["largely_recommended"]["score"]) == (
        "yt:aaa",
        -3,
    )
    assert stored["importance"]["score"] == -2


def test_pair_read_in_either_order_and_delete(client: ApiClient) -> None:
    auth = client.key(WRITE)
    client.post(
        "/api/v1/comparisons",
        json=payload(a="yt:zzz", b="yt:aaa", largely_recommended=4),
        headers=auth,
    )
    forward = client.get("/api/v1/comparisons/alice/yt:zzz/yt:aaa").json()
    backward = client.get("/api/v1/comparisons/alice/yt:aaa/yt:zzz").json()
    assert forward["criteria_scores"][0]["score"] == 4
    assert backward["criteria_scores"][0]["score"] == -4
    assert client.delete("/api/v1/comparisons/alice/yt:aaa/yt:zzz", headers=auth).status_code == 204
    assert_problem(client.get("/api/v1/comparisons/alice/yt:zzz/yt:aaa"), 404)
    assert_problem(client.delete("/api/v1/comparisons/alice/yt:aaa/yt:zzz", headers=auth), 404)


def test_delete_one_criterion_keeps_the_others(client: ApiClient) -> None:
    auth = client.key(WRITE)
    client.post(
        "/api/v1/comparisons", json=payload(largely_recommended=1, importance=2), headers=auth
    )
    response = client.delete(
        "/api/v1/comparisons/alice/yt:aaa/yt:bbb", params={"criterion": "importance"}, headers=auth
    )
    assert response.status_code == 204
    remaining = client.get("/api/v1/comparisons/alice/yt:aaa/yt:bbb").json()["criteria_scores"]
    assert [r["criterion"] for r in remaining] == ["largely_recommended"]
    # The pair exists, but not on that criterion: the 404 says which.
    for criterion in ("importance", "nope"):
        missing = client.delete(
            "/api/v1/comparisons/alice/yt:aaa/yt:bbb",
            params={"criterion": criterion},
            headers=auth,
        )
        assert f"on criterion '{criterion}'" in assert_problem(missing, 404)["detail"]


def test_list_filters_and_stable_paging(client: ApiClient) -> None:
    auth = client.key(WRITE)
    for i in range(5):
        client.post(
            "/api/v1/comparisons", json=payload(user=f"u{i}", a="yt:x", b=f"yt:y{i}"), headers=auth
        )
    client.post(
        "/api/v1/comparisons",
        json=payload(user="u0", a="yt:p", b="yt:q", importance=1),
        headers=auth,
    )
    page1 = client.get("/api/v1/comparisons", params={"limit": 2}).json()
    page2 = client.get("/api/v1/comparisons", params={"limit": 2, "offset": 2}).json()
    assert page1["total"] == 6 and (page1["limit"], page2["offset"]) == (2, 2)
    ids = [(r["user_id"], r["video_b"]) for r in page1["items"] + page2["items"]]
    assert ids == [("u0", "yt:y0"), ("u1", "yt:y1"), ("u2", "yt:y2"), ("u3", "yt:y3")]
    assert client.get("/api/v1/comparisons", params={"video_id": "yt:x"}).json()["total"] == 5
    assert (
        client.get("/api/v1/comparisons", params={"criterion": "importance"}).json()["total"] == 1
    )
    assert client.get("/api/v1/comparisons", params={"user_id": "nobody"}).json()["total"] == 0
    user = client.get("/api/v1/users/u0/comparisons").json()
    assert user["total"] == 2


def test_videos_count_comparisons_and_contributors(client: ApiClient) -> None:
    auth = client.key(WRITE)
    client.post(
        "/api/v1/comparisons",
        json=payload(user="u1", a="yt:a", b="yt:b", largely_recommended=1, importance=1),
        headers=auth,
    )
    client.post("/api/v1/comparisons", json=payload(user="u2", a="yt:a", b="yt:c"), headers=auth)
    videos = {v["video_id"]: v for v in client.get("/api/v1/videos").json()["items"]}
    assert (videos["yt:a"]["n_comparisons"], videos["yt:a"]["n_contributors"]) == (3, 2)
    assert (videos["yt:c"]["n_comparisons"], videos["yt:c"]["n_contributors"]) == (1, 1)
    only_importance = {
        v["video_id"]: v
        for v in client.get("/api/v1/videos", params={"criterion": "importance"}).json()["items"]
    }
    assert (
        only_importance["yt:a"]["n_comparisons"] == 1
        and only_importance["yt:c"]["n_comparisons"] == 0
    )


def test_criteria_are_seeded_and_can_be_added(client: ApiClient) -> None:
    names = [c["name"] for c in client.get("/api/v1/criteria").json()]
    assert len(names) == 10 and names[0] == "largely_recommended"
    auth = client.key("criteria:write")
    created = client.post(
        "/api/v1/criteria", json={"name": "humour", "label": "Funny"}, headers=auth
    )
    assert created.status_code == 201
    assert_problem(client.post("/api/v1/criteria", json={"name": "humour"}, headers=auth), 409)
    # The new criterion is usable at once.
    write = client.key(WRITE)
    assert (
        client.post("/api/v1/comparisons", json=payload(humour=2), headers=write).status_code == 201
    )


def test_auth_and_scopes(client: ApiClient) -> None:
    body = payload()
    assert_problem(client.post("/api/v1/comparisons", json=body), 401)
    assert_problem(
        client.post("/api/v1/comparisons", json=body, headers={"Authorization": "Bearer nope"}), 401
    )
    forged = client.key(WRITE)["Authorization"][:-3] + "xyz"
    assert_problem(
        client.post("/api/v1/comparisons", json=body, headers={"Authorization": forged}), 401
    )
    assert_problem(
        client.post("/api/v1/comparisons", json=body, headers=client.key("criteria:write")), 403
    )
    assert_problem(
        client.post("/api/v1/criteria", json={"name": "x1"}, headers=client.key(WRITE)), 403
    )
    assert (
        client.post("/api/v1/comparisons", json=body, headers=client.key("admin")).status_code
        == 201
    )
    # Nothing was stored by the refused requests: only the admin's post.
    assert client.get("/api/v1/comparisons").json()["total"] == 1


def test_validation_errors_name_the_field_and_store_nothing(client: ApiClient) -> None:
    auth = client.key(WRITE)
    cases = [
        (payload(largely_recommended=11), "/criteria_scores/0/score"),
        ({**payload(), "video_b": "yt:aaa"}, "/"),
        (payload(no_such_criterion=1), "/criteria_scores/0/criterion"),
        ({**payload(), "extra": 1}, "/extra"),
        ({**payload(), "video_a": "bad id with spaces"}, "/video_a"),
        ({"user_id": "alice"}, "/video_a"),
        ({**payload(), "criteria_scores": []}, "/criteria_scores"),
    ]
    for body, pointer in cases:
        problem = assert_problem(client.post("/api/v1/comparisons", json=body, headers=auth), 422)
        assert any(e["pointer"].startswith(pointer) for e in problem["errors"]), (pointer, problem)
    assert_problem(
        client.post(
            "/api/v1/comparisons",
            content=b"{not json",
            headers={**auth, "content-type": "application/json"},
        ),
        422,
    )
    assert_problem(client.get("/api/v1/comparisons", params={"limit": 100000}), 422)
    assert_problem(client.get("/api/v1/comparisons", params={"offset": -1}), 422)
    assert_problem(client.get("/api/v1/comparisons", params={"criterion": "nope"}), 404)
    assert_problem(client.get("/api/v1/nothing-here"), 404)
    assert_problem(client.put("/api/v1/comparisons", json={}), 405)
    assert client.get("/api/v1/comparisons").json()["total"] == 0


def test_score_max_per_criterion(client: ApiClient) -> None:
    auth = client.key(WRITE)
    body = payload()
    body["criteria_scores"] = [{"criterion": "largely_recommended", "score": 40, "score_max": 50}]
    assert client.post("/api/v1/comparisons", json=body, headers=auth).status_code == 201
    row = client.get("/api/v1/comparisons").json()["items"][0]
    assert (row["score"], row["score_max"]) == (40, 50)
    body["criteria_scores"][0]["score"] = 51
    assert_problem(client.post("/api/v1/comparisons", json=body, headers=auth), 422)


def test_a_revoked_key_stops_working_once_the_cache_expires(
    client: ApiClient, monkeypatch: Any
) -> None:
    from datetime import UTC, datetime

    from sqlmodel import select

    from app.identity import security
    from app.models import ApiKey

    auth = client.key(WRITE)
    assert client.post("/api/v1/comparisons", json=payload(), headers=auth).status_code == 201
    with client._session_factory() as session:  # type: ignore[operator]
        for row in session.exec(select(ApiKey)).all():
            row.revoked_at = datetime.now(UTC)
            session.add(row)
        session.commit()
    # Within the cache window the verified key is still honoured without a lookup ...
    assert (
        client.post(
            "/api/v1/comparisons", json=payload(largely_recommended=1), headers=auth
        ).status_code
        == 200
    )
    # ... and refused as soon as the window has passed.
    monkeypatch.setattr(security, "KEY_CACHE_SECONDS", 0.0)
    assert_problem(
        client.post("/api/v1/comparisons", json=payload(largely_recommended=2), headers=auth), 401
    )
