"""Single writes on databases whose commits are real: on PostgreSQL the write usually is one
autocommit statement that also checks for queued auto runs (`write_comparison_in_one_statement`),
else the transactional path. Both must answer, store and schedule the same."""

import json
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session

from app.api.deps import paging
from app.comparisons import service
from app.comparisons.schemas import ComparisonCreate
from app.comparisons.single_write import SingleWriteFastPath
from app.core.db import get_engine, make_engine
from app.core.errors import InvalidInput
from app.identity.security import authenticate, create_api_key
from app.main import create_app
from app.runs.freshness import comparisons_changed
from tests.comparisons.test_comparisons import assert_problem, payload
from tests.conftest import reset_caches

URL = "/api/v1/comparisons"


def stored(engine: Engine) -> dict[str, Any]:
    """What a fresh connection sees: committed comparisons, users, videos and auto runs."""
    with engine.connect() as connection:
        comparisons = connection.execute(
            text(
                "SELECT u.external_id, va.external_id, vb.external_id, c.name, x.score,"
                " x.score_max FROM comparisons x JOIN users u ON u.id = x.user_id"
                " JOIN videos va ON va.id = x.video_a_id JOIN videos vb ON vb.id = x.video_b_id"
                " JOIN criteria c ON c.id = x.criterion_id ORDER BY 1, 2, 3, 4"
            )
        ).all()
        runs = connection.execute(
            text("SELECT scope, status FROM training_runs WHERE trigger = 'auto' ORDER BY scope")
        ).all()
        users = connection.execute(text("SELECT count(*) FROM users")).scalar_one()
        videos = connection.execute(text("SELECT count(*) FROM videos")).scalar_one()
    return {
        "comparisons": [tuple(row) for row in comparisons],
        "auto_runs": [tuple(row) for row in runs],
        "users": users,
        "videos": videos,
    }


@pytest.fixture
def api(committed_database: str) -> Iterator[tuple[TestClient, dict[str, str]]]:
    with Session(get_engine()) as session:
        _row, key = create_api_key(session, name="t", scopes=["comparisons:write"])
        session.commit()
    with TestClient(create_app()) as client:
        yield client, {"Authorization": f"Bearer {key}"}


def test_answers_storage_and_auto_runs_through_the_api(
    api: tuple[TestClient, dict[str, str]],
) -> None:
    client, auth = api
    engine = get_engine()
    # No auto run queued yet: written in a transaction that schedules one.
    first = client.post(URL, json=payload(largely_recommended=6), headers=auth)
    assert first.status_code == 201, first.text
    assert first.json() == {
        "user_id": "alice",
        "video_a": "yt:aaa",
        "video_b": "yt:bbb",
        "criteria_scores": [
            {
                "criterion": "largely_recommended",
                "score": 6.0,
                "score_max": 10.0,
                "status": "created",
            }
        ],
        "created": 1,
        "updated": 0,
        "unchanged": 0,
    }
    assert stored(engine)["auto_runs"] == [("largely_recommended", "queued")]
    # A run is queued now: on PostgreSQL these are single statements; the answers are the same.
    again = client.post(URL, json=payload(largely_recommended=6), headers=auth)
    assert again.status_code == 200
    assert again.json()["criteria_scores"][0]["status"] == "unchanged"
    assert (again.json()["created"], again.json()["updated"], again.json()["unchanged"]) == (
        0,
        0,
        1,
    )
    flipped = client.post(
        URL, json=payload(a="yt:bbb", b="yt:aaa", largely_recommended=2), headers=auth
    )
    assert flipped.status_code == 200
    assert flipped.json()["criteria_scores"] == [
        {"criterion": "largely_recommended", "score": 2.0, "score_max": 10.0, "status": "updated"}
    ]
    new_user = client.post(
        URL, json=payload(user="bob", b="yt:ccc", largely_recommended=-3), headers=auth
    )
    assert new_user.status_code == 201 and new_user.json()["created"] == 1
    # One criterion with a queued run, one without: the transactional path schedules the other.
    both = client.post(URL, json=payload(largely_recommended=1, importance=4), headers=auth)
    assert both.status_code == 201
    assert [s["status"] for s in both.json()["criteria_scores"]] == ["updated", "created"]
    unknown = client.post(URL, json=payload(user="carol", b="yt:zzz", nope=1), headers=auth)
    body = assert_problem(unknown, 422)
    assert body["errors"][0]["pointer"] == "/criteria_scores/0/criterion"
    assert stored(engine) == {
        "comparisons": [
            ("alice", "yt:aaa", "yt:bbb", "importance", 4.0, 10.0),
            ("alice", "yt:aaa", "yt:bbb", "largely_recommended", 1.0, 10.0),
            ("bob", "yt:aaa", "yt:ccc", "largely_recommended", -3.0, 10.0),
        ],
        "auto_runs": [("importance", "queued"), ("largely_recommended", "queued")],
        "users": 2,
        "videos": 3,
    }


def test_a_missing_key_or_scope_is_refused_before_anything_is_written(
    api: tuple[TestClient, dict[str, str]],
) -> None:
    client, _auth = api
    assert_problem(client.post(URL, json=payload()), 401)
    with Session(get_engine()) as session:
        _row, key = create_api_key(session, name="reader", scopes=["runs:write"])
        session.commit()
    assert_problem(
        client.post(URL, json=payload(), headers={"Authorization": f"Bearer {key}"}), 403
    )
    assert stored(get_engine())["comparisons"] == []


@pytest.mark.parametrize("backend", ["postgres"])
def test_one_statement_writes_only_when_auto_runs_are_queued(committed_database: str) -> None:
    # One pooled connection, so the test also sees it handed back out of autocommit mode.
    engine = make_engine(committed_database, pool_size=1, max_overflow=0)
    try:
        comparison = ComparisonCreate.model_validate(payload(largely_recommended=6, importance=2))
        with Session(engine) as session:
            # No run queued: nothing written, and the session is left without a transaction.
            assert service.write_comparison_in_one_statement(session, payload=comparison) is None
            assert not session.in_transaction()
            assert stored(get_engine()) == {
                "comparisons": [],
                "auto_runs": [],
                "users": 0,
                "videos": 0,
            }
            comparisons_changed(session, criteria=["largely_recommended"])
            session.commit()
            # One of the two criteria has a queued run: still nothing written.
            assert service.write_comparison_in_one_statement(session, payload=comparison) is None
            assert stored(get_engine())["comparisons"] == []
            comparisons_changed(session, criteria=["importance"])
            session.commit()
            result = service.write_comparison_in_one_statement(session, payload=comparison)
            assert result is not None
            assert (result.created, result.updated, result.unchanged) == (2, 0, 0)
            assert [s.status for s in result.criteria_scores] == ["created", "created"]
            # Committed (a fresh connection sees it), and no run added.
            assert len(stored(get_engine())["comparisons"]) == 2
            assert len(stored(get_engine())["auto_runs"]) == 2
            # The pooled connection is back in transactions: a rolled-back write leaves nothing.
            driver: Any = session.connection().connection.driver_connection
            assert driver.autocommit is False
            session.execute(text("INSERT INTO users (external_id, created_at) VALUES ('x', now())"))
            session.rollback()
            assert stored(get_engine())["users"] == 1
            # The same payload through the transactional path answers the same.
            again = service.write_comparison_in_one_statement(session, payload=comparison)
            assert again is not None and again.unchanged == 2
            session.begin()
            assert service.write_comparison(session, payload=comparison) == again
            session.commit()
            # A session already in a transaction is left to it.
            session.execute(text("SELECT 1"))
            assert service.write_comparison_in_one_statement(session, payload=comparison) is None
            session.rollback()
            unknown = ComparisonCreate.model_validate(payload(user="z", nope=1))
            with pytest.raises(InvalidInput) as raised:
                service.write_comparison_in_one_statement(session, payload=unknown)
            session.rollback()
            with pytest.raises(InvalidInput) as expected:
                service.write_comparison(session, payload=unknown)
            session.rollback()
            assert raised.value.errors == expected.value.errors
            assert raised.value.detail == expected.value.detail
            assert stored(get_engine())["users"] == 1
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["postgres"])
def test_one_statement_without_auto_training_needs_no_queued_run(
    committed_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTO_TRAIN_ENABLED", "false")
    reset_caches()
    comparison = ComparisonCreate.model_validate(payload(largely_recommended=6))
    with Session(get_engine()) as session:
        result = service.write_comparison_in_one_statement(session, payload=comparison)
    assert result is not None and result.created == 1
    assert stored(get_engine())["auto_runs"] == []
    assert len(stored(get_engine())["comparisons"]) == 1


@pytest.mark.parametrize("backend", ["sqlite"])
def test_sqlite_keeps_the_transactional_path(committed_database: str) -> None:
    comparison = ComparisonCreate.model_validate(payload(largely_recommended=6))
    with Session(get_engine()) as session:
        assert service.write_comparison_in_one_statement(session, payload=comparison) is None
        assert not session.in_transaction()
    assert stored(get_engine())["comparisons"] == []


def _requests(user: str) -> list[tuple[bytes, dict[str, str]]]:
    """Bodies and extra headers of a sequence of single writes by `user`, good and bad."""

    def body(**fields: Any) -> bytes:
        return json.dumps({**payload(user=user), **fields}).encode()

    scores = [{"criterion": "largely_recommended", "score": 6}]
    return [
        (body(criteria_scores=scores), {}),  # created
        (body(criteria_scores=scores), {}),  # unchanged
        (body(video_a="yt:bbb", video_b="yt:aaa", criteria_scores=scores), {}),  # updated
        (body(criteria_scores=[*scores, {"criterion": "importance", "score": -2.5}]), {}),
        (body(criteria_scores=[{"criterion": "nope", "score": 1}]), {}),  # unknown criterion
        (body(criteria_scores=[{"criterion": "importance", "score": 11}]), {}),  # out of range
        (body(video_b="yt:aaa"), {}),  # the same video twice
        (body(extra=1), {}),  # an unknown field
        (b'{"user_id": ', {}),  # not JSON
        (b"", {}),  # no body
        (b"[]", {}),  # not an object
        (body(video_b="yt:\u00e9t\u00e9"), {}),  # non-ASCII, echoed in the answer
        (body(criteria_scores=scores), {"content-type": "application/json; charset=utf-8"}),
        (body(criteria_scores=scores), {"content-type": "text/plain"}),
        (body(criteria_scores=scores), {"authorization": ""}),  # no key
        (body(criteria_scores=scores), {"authorization": "Bearer lk_0_unknown"}),
        (body(criteria_scores=scores), {"scope": "runs:write"}),  # a key without the scope
    ]


@pytest.fixture
def two_apps(committed_database: str) -> Iterator[tuple[TestClient, TestClient, dict[str, str]]]:
    """The application as served (the fast path on), and one whose single writes all go through
    the route: any dependency override turns the fast path off."""
    with Session(get_engine()) as session:
        keys = {
            scope: create_api_key(session, name=scope, scopes=[scope])[1]
            for scope in ("comparisons:write", "runs:write")
        }
        session.commit()
    routed = create_app()
    routed.dependency_overrides[paging] = paging
    with TestClient(create_app()) as fast, TestClient(routed) as route:
        yield fast, route, keys


def test_the_fast_path_answers_byte_for_byte_as_the_route(
    two_apps: tuple[TestClient, TestClient, dict[str, str]],
) -> None:
    fast, route, keys = two_apps
    for key in keys.values():  # verified and remembered, so the fast path serves from the first
        authenticate_and_remember(key)
    # Users of the same length, so that answers compare byte for byte once renamed.
    for client, user in ((fast, "fastpath"), (route, "routedto")):
        answers = []
        for body, extra in _requests(user):
            headers = {"content-type": "application/json"}
            headers["authorization"] = f"Bearer {keys[extra.pop('scope', 'comparisons:write')]}"
            headers |= extra
            response = client.post(URL, content=body, headers=headers)
            answers.append(
                (
                    response.status_code,
                    response.headers.get("content-type"),
                    response.headers.get("content-length"),
                    response.content.replace(user.encode(), b"USER"),
                )
            )
        if client is fast:
            expected = answers
    assert answers == expected
    statuses = [status for status, *_ in answers]
    # text/plain (the 14th) is a 415: the route takes application/json only.
    assert statuses[:14] == [201, 200, 200, 201, 422, 422, 422, 422, 422, 422, 422, 201, 200, 415]
    assert statuses[14:] == [401, 401, 403]
    # Both users' rows are the same.
    rows = stored(get_engine())["comparisons"]
    assert [row[1:] for row in rows if row[0] == "fastpath"] == [
        row[1:] for row in rows if row[0] == "routedto"
    ]


def test_fast_path_requests_are_counted_by_the_metrics(
    api: tuple[TestClient, dict[str, str]],
) -> None:
    client, auth = api
    for i in range(3):  # the first one verifies the key: it goes through the route
        assert client.post(URL, json=payload(b=f"yt:m{i}"), headers=auth).status_code == 201
    metrics = client.get("/metrics").text
    assert (
        'http_requests_total{handler="/api/v1/comparisons",method="POST",status="2xx"} 3.0'
        in metrics
    )


def test_a_body_over_the_limit_is_refused_on_the_fast_path_too(
    api: tuple[TestClient, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, auth = api
    client.post(URL, json=payload(), headers=auth)  # the key is now verified
    big = json.dumps({**payload(), "padding": "x" * 20_000}).encode()
    monkeypatch.setenv("MAX_BODY_BYTES", "8192")
    reset_caches()
    with TestClient(create_app()) as limited:
        response = limited.post(
            URL, content=big, headers={**auth, "content-type": "application/json"}
        )
    assert_problem(response, 413)


def authenticate_and_remember(key: str) -> None:
    with Session(get_engine()) as session:
        authenticate(session, f"Bearer {key}")


def through(
    middleware: SingleWriteFastPath, app: Any, body: bytes, headers: dict[str, str], **scope: Any
) -> tuple[int, bytes]:
    """The status and body the middleware answers a POST to URL with."""
    answer: dict[str, Any] = {"status": 0, "body": b""}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
        else:
            answer["body"] += message.get("body", b"")

    full = {
        "type": "http",
        "method": "POST",
        "path": URL,
        "query_string": b"",
        "root_path": "",
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
        "app": app,
        **scope,
    }
    anyio.run(middleware, full, receive, send)
    return answer["status"], answer["body"]


def test_the_fast_path_serves_what_it_can_and_hands_the_rest_on(committed_database: str) -> None:
    """The middleware alone, in front of an application that records what reaches it."""
    with Session(get_engine()) as session:
        _row, key = create_api_key(session, name="t", scopes=["comparisons:write"])
        session.commit()
    app = create_app()
    reached: list[bytes] = []

    async def downstream(scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        reached.append(message["body"])
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    middleware = SingleWriteFastPath(downstream, path=URL)

    def call(body: bytes, headers: dict[str, str], **scope: Any) -> int:
        return through(middleware, app, body, headers, **scope)[0]

    good = json.dumps(payload()).encode()
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    # Not yet verified: the route looks the key up (and remembers it).
    assert call(good, headers) == 299
    authenticate_and_remember(key)
    assert call(good, headers) == 201
    assert call(good, headers) == 200
    assert call(json.dumps(payload(nope=1)).encode(), headers) == 422  # raised by the write
    assert reached == [good]
    for body, extra, scope in [
        (b"{", {}, {}),
        (json.dumps(payload(importance=99)).encode(), {}, {}),
        (good, {"content-type": "application/json; charset=utf-8"}, {}),
        (good, {"authorization": "Bearer lk_x_y"}, {}),
        (good, {}, {"query_string": b"a=1"}),
        (good, {}, {"method": "PUT"}),
        (good, {}, {"path": URL + "/"}),
    ]:
        reached.clear()
        assert call(body, headers | extra, **scope) == 299
        assert reached == [body]  # the body handed on as it came
    app.dependency_overrides[paging] = paging
    reached.clear()
    assert call(good, headers) == 299 and reached == [good]


def test_the_fast_path_applies_the_routes_user_rules(committed_database: str) -> None:
    """A user key on the fast path: its user filled in, another user refused with the route's
    403, a service key's missing user with the route's 422; nothing reaches the route."""
    with Session(get_engine()) as session:
        _row, user_key = create_api_key(
            session, name="t", scopes=["comparisons:write"], user_id="alice"
        )
        _row, service_key = create_api_key(session, name="t", scopes=["comparisons:write"])
        session.commit()
    app = create_app()
    reached: list[bytes] = []

    async def downstream(scope: Any, receive: Any, send: Any) -> None:
        reached.append((await receive())["body"])
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    middleware = SingleWriteFastPath(downstream, path=URL)

    def call(body: dict[str, Any], key: str) -> tuple[int, bytes]:
        headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
        return through(middleware, app, json.dumps(body).encode(), headers)

    authenticate_and_remember(user_key)
    authenticate_and_remember(service_key)
    omitted = {k: v for k, v in payload().items() if k != "user_id"}
    status, body = call(omitted, user_key)
    assert status == 201 and json.loads(body)["user_id"] == "alice"
    assert call(payload(), user_key)[0] == 200
    status, body = call(payload(user="bob"), user_key)
    assert status == 403 and "alice" in json.loads(body)["detail"]
    status, body = call(omitted, service_key)
    assert status == 422 and json.loads(body)["errors"][0]["pointer"] == "/user_id"
    assert reached == []
    assert [row[0] for row in stored(get_engine())["comparisons"]] == ["alice"]


def test_user_rules_are_the_same_through_the_router_and_the_fast_path(
    api: tuple[TestClient, dict[str, str]],
) -> None:
    """A real application: the first request of a key goes through the router (which verifies
    it), the next ones through the fast path; each answer is the same."""
    client, _auth = api
    with Session(get_engine()) as session:
        _row, key = create_api_key(session, name="t", scopes=["comparisons:write"], user_id="al")
        session.commit()
    auth = {"Authorization": f"Bearer {key}"}
    omitted = {k: v for k, v in payload().items() if k != "user_id"}
    answers = []
    for _ in range(2):
        other = client.post(URL, json=payload(user="bob"), headers=auth)
        own = client.post(URL, json=omitted, headers=auth)
        answers.append((other.status_code, other.json()["detail"], own.json()["user_id"]))
    assert answers[0] == answers[1] and answers[0][:1] == (403,)
    assert [row[0] for row in stored(get_engine())["comparisons"]] == ["al"]
