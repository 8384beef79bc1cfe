"""Bad-input corpus on both backends: every case is answered with a problem+json 4xx, and nothing
stored changes (comparisons, criteria, runs, sweeps, promotions)."""

import json
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from tests.comparisons.test_comparisons import assert_problem, payload
from tests.conftest import ApiClient

ADMIN = "admin"
DEEP = 100_000
CSV_HEADER = "public_username,video_a,video_b,criteria,score,score_max\n"


def deep_json(depth: int = DEEP) -> bytes:
    return b"[" * depth + b"]" * depth


def stored(client: ApiClient) -> dict[str, Any]:
    """What the service holds, as its public API shows it."""
    return {
        "comparisons": client.get("/api/v1/comparisons", params={"limit": 1000}).json(),
        "criteria": client.get("/api/v1/criteria").json(),
        "runs": client.get("/api/v1/training-runs").json()["total"],
        "sweeps": client.get("/api/v1/sweeps").json()["total"],
        "defaults": client.get("/api/v1/training-defaults").json()["total"],
    }


@pytest.fixture
def seeded(client: ApiClient) -> tuple[ApiClient, dict[str, str]]:
    """A client with one stored comparison and an admin key already verified (so single writes
    take the fast path on the embedded default, where no dependency override is set)."""
    auth = client.key(ADMIN)
    first = client.post("/api/v1/comparisons", json=payload(), headers=auth)
    assert first.status_code == 201, first.text
    return client, auth


def _json(body: Any) -> dict[str, Any]:
    return {"content": json.dumps(body), "headers": {"Content-Type": "application/json"}}


def _raw(body: bytes, content_type: str = "application/json") -> dict[str, Any]:
    return {"content": body, "headers": {"Content-Type": content_type}}


def _score(value: Any) -> dict[str, Any]:
    body = payload()
    body["criteria_scores"][0]["score"] = value
    return body


# (method, path, request keywords, acceptable statuses): each sent with the admin key.
CASES: dict[str, tuple[str, str, dict[str, Any], tuple[int, ...]]] = {
    # 100,000-deep JSON: the standard library's parser raised RecursionError (500), and FastAPI
    # answered the routes it parses itself with a 400.
    "deep json, single write": ("POST", "/comparisons", _raw(deep_json()), (422,)),
    "deep json, bulk": ("POST", "/comparisons/bulk", _raw(deep_json()), (422,)),
    "deep json, sweep": ("POST", "/sweeps", _raw(deep_json()), (422,)),
    "deep json, sweep dry run": ("POST", "/sweeps?dry_run=true", _raw(deep_json()), (422,)),
    "deep json, criterion": ("POST", "/criteria", _raw(deep_json()), (422,)),
    "deep json, run": ("POST", "/training-runs", _raw(deep_json()), (422,)),
    "deep object, bulk": (
        "POST",
        "/comparisons/bulk",
        _raw(b'{"a":' * DEEP + b"1" + b"}" * DEEP),
        (422,),
    ),
    # A CSV field longer than csv.field_size_limit() (131,072 characters): csv.Error was a 500.
    "csv field over the csv limit": (
        "POST",
        "/comparisons/bulk",
        _raw(
            (CSV_HEADER + "bob,yt:a,yt:" + "x" * 200_000 + ",largely_recommended,1,\n").encode(),
            "text/csv",
        ),
        (422,),
    ),
    "csv quoted field over the csv limit": (
        "POST",
        "/comparisons/bulk",
        _raw(
            (CSV_HEADER + 'bob,yt:a,"' + "x" * 200_000 + '",largely_recommended,1,\n').encode(),
            "text/csv",
        ),
        (422,),
    ),
    # NUL and other control characters, in query parameters, filters, labels, notes, settings.
    "nul in sweep tag": ("GET", "/sweeps?tag=a%00b", {}, (422,)),
    "control character in sweep tag": ("GET", "/sweeps?tag=a%1bb", {}, (422,)),
    "nul in leaderboard metric": ("GET", "/sweeps/1/leaderboard?metric=a%00b", {}, (422,)),
    "nul in trial filter": ("GET", "/sweeps/1/trials?filter=status%20%3D%20a%00", {}, (422,)),
    "nul in trial sort": ("GET", "/sweeps/1/trials?sort=a%00", {}, (422,)),
    "nul in plot axis": ("GET", "/sweeps/1/plots/metric-vs-parameter.json?x=a%00", {}, (422,)),
    "nul in plot series": ("GET", "/sweeps/1/plots/loss-curves.png?series=%00", {}, (422,)),
    "nul in criterion label": (
        "POST",
        "/criteria",
        _json({"name": "nulled", "label": "a\x00b"}),
        (422,),
    ),
    "nul in promotion note": ("POST", "/sweeps/1/promote", _json({"note": "a\x00"}), (422,)),
    "nul in run setting value": (
        "POST",
        "/training-runs",
        _json({"config": {"a": "x\x00"}}),
        (422,),
    ),
    "nul in run setting key": ("POST", "/training-runs", _json({"config": {"a\x00": 1}}), (422,)),
    "nul in nested run setting": (
        "POST",
        "/training-runs",
        _json({"config": {"a": [{"b": "\x00"}]}}),
        (422,),
    ),
    "nul in trial overrides": (
        "POST",
        "/sweeps/1/trials/1/rerun",
        _json({"overrides": {"x": "\x00"}}),
        (422,),
    ),
    "nul in user id": ("POST", "/comparisons", _json(payload(user="a\x00b")), (422,)),
    "nul in user id filter": ("GET", "/comparisons?user_id=a%00b", {}, (422,)),
    "nul in criterion filter": ("GET", "/videos?criterion=a%00", {}, (422,)),
    "lone surrogate in bulk": (
        "POST",
        "/comparisons/bulk",
        _raw(b'[{"user_id": "\\ud800"}]'),
        (422,),
    ),
    # Scores are JSON numbers: "5" and true were accepted.
    "string score, single write": ("POST", "/comparisons", _json(_score("5")), (422,)),
    "boolean score, single write": ("POST", "/comparisons", _json(_score(True)), (422,)),
    "string score_max, single write": (
        "POST",
        "/comparisons",
        _json(
            {
                **payload(),
                "criteria_scores": [
                    {"criterion": "largely_recommended", "score": 1, "score_max": "10"}
                ],
            }
        ),
        (422,),
    ),
    "string score, bulk": ("POST", "/comparisons/bulk", _json([payload(), _score("5")]), (422,)),
    "boolean score, bulk": ("POST", "/comparisons/bulk", _json([_score(False)]), (422,)),
    "infinite score, bulk": (
        "POST",
        "/comparisons/bulk",
        _raw(b"[" + json.dumps(payload()).replace("6", "1e999").encode() + b"]"),
        (422,),
    ),
    # One score_max bound (1000) for JSON and CSV: CSV took 1e6.
    "csv score_max over the bound": (
        "POST",
        "/comparisons/bulk",
        _raw((CSV_HEADER + "bob,yt:a,yt:b,largely_recommended,5,1e6\n").encode(), "text/csv"),
        (422,),
    ),
    "json score_max over the bound": (
        "POST",
        "/comparisons/bulk",
        _json(
            [
                {
                    **payload(),
                    "criteria_scores": [
                        {"criterion": "largely_recommended", "score": 5, "score_max": 1e6}
                    ],
                }
            ]
        ),
        (422,),
    ),
    # Other shapes the routes refuse.
    "bulk not a list": ("POST", "/comparisons/bulk", _json({"a": 1}), (422,)),
    "bulk other media type": (
        "POST",
        "/comparisons/bulk",
        _raw(b"<x/>", "application/xml"),
        (415,),
    ),
    "csv not utf-8": (
        "POST",
        "/comparisons/bulk",
        _raw(CSV_HEADER.encode() + b"\xff\xfe,\n", "text/csv"),
        (422,),
    ),
    "csv without header columns": (
        "POST",
        "/comparisons/bulk",
        _raw(b"a,b\n1,2\n", "text/csv"),
        (422,),
    ),
    "sweep other media type": ("POST", "/sweeps", _raw(b"x", "text/plain"), (415,)),
    "sweep not json": ("POST", "/sweeps", _raw(b"{"), (422,)),
    "run id beyond bigint": ("GET", "/training-runs/99999999999999999999", {}, (404, 422)),
    "sweep id beyond bigint": ("GET", "/sweeps/99999999999999999999", {}, (404, 422)),
    "offset beyond bigint": ("GET", "/comparisons?offset=99999999999999999999", {}, (422,)),
    "limit over the cap": ("GET", "/comparisons?limit=100000", {}, (422,)),
    "same video twice": ("POST", "/comparisons", _json(payload(a="yt:x", b="yt:x")), (422,)),
    # Lax coercions: a JSON body says what it means.
    "run setting true for a number": (
        "POST",
        "/training-runs",
        _json({"config": {"w": True}}),
        (422,),
    ),
    "run setting 1 for a boolean": (
        "POST",
        "/training-runs",
        _json({"config": {"optimise_s": 1}}),
        (422,),
    ),
    "run warm_start as text": ("POST", "/training-runs", _json({"warm_start": "yes"}), (422,)),
    "sweep budget as text": ("PATCH", "/sweeps/1", _json({"max_parallel": "4"}), (422,)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_a_problem_and_changes_nothing(
    seeded: tuple[ApiClient, dict[str, str]], case: str
) -> None:
    client, auth = seeded
    method, path, keywords, statuses = CASES[case]
    before = stored(client)
    headers = {**keywords.get("headers", {}), **auth}
    response = client.request(method, "/api/v1" + path, **{**keywords, "headers": headers})
    assert response.status_code in statuses, (case, response.status_code, response.text[:300])
    assert_problem(response, response.status_code)
    assert stored(client) == before


def test_csv_field_over_the_limit_names_its_row(seeded: tuple[ApiClient, dict[str, str]]) -> None:
    client, auth = seeded
    body = (
        CSV_HEADER
        + "bob,yt:a,yt:b,largely_recommended,1,\n"
        + "bob,yt:a,yt:"
        + "x" * 140_000
        + ",largely_recommended,1,\n"
    )
    response = client.post(
        "/api/v1/comparisons/bulk",
        content=body.encode(),
        headers={**auth, "Content-Type": "text/csv"},
    )
    problem = assert_problem(response, 422)
    assert [error["row"] for error in problem["errors"]] == [2]
    assert "131072" in problem["errors"][0]["message"]


WRITE_ROUTES = [
    ("POST", "/comparisons"),
    ("POST", "/comparisons/bulk"),
    ("POST", "/criteria"),
    ("POST", "/training-runs"),
    ("POST", "/sweeps"),
    ("PATCH", "/sweeps/1"),
    ("POST", "/sweeps/1/promote"),
    ("POST", "/sweeps/1/trials/1/rerun"),
]


@pytest.mark.parametrize(("method", "path"), WRITE_ROUTES)
def test_the_key_is_checked_before_the_body_is_parsed(
    client: ApiClient, method: str, path: str
) -> None:
    """A body that cannot be parsed still gets 401 without a key and 403 without the scope: the
    key is checked first, so a client without one cannot make the service parse 16 MB."""
    unparsable = _raw(b"{" * 1000)
    response = client.request(method, "/api/v1" + path, **unparsable)
    assert_problem(response, 401)
    wrong_scope = client.key("scores:read_local")
    response = client.request(
        method,
        "/api/v1" + path,
        content=unparsable["content"],
        headers={**unparsable["headers"], **wrong_scope},
    )
    assert_problem(response, 403)


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/api/v1/comparisons", "GET, HEAD, POST"),
        ("PATCH", "/api/v1/comparisons/a/yt:a/yt:b", "DELETE, GET, HEAD"),
        ("DELETE", "/api/v1/sweeps/1", "GET, HEAD, PATCH"),
        ("POST", "/api/v1/no-such-path", None),
        ("PUT", "/api/v1/criteria", "GET, HEAD, POST"),
        ("POST", "/healthz", "GET, HEAD"),
    ],
)
def test_method_not_allowed_names_every_allowed_method(
    client: ApiClient, method: str, path: str, allowed: str | None
) -> None:
    response = client.request(method, path)
    if allowed is None:  # no route on that path at all
        assert_problem(response, 404)
        return
    assert_problem(response, 405)
    assert response.headers["allow"] == allowed


def test_public_error_leaves_out_the_statement_and_its_parameters(
    sqlite_engine: Any,
) -> None:
    from app.core.errors import public_error

    with sqlite_engine.connect() as connection, pytest.raises(SQLAlchemyError) as caught:
        connection.execute(text("SELECT secret FROM no_such_table WHERE x = :p"), {"p": "hunter2"})
    message = public_error(caught.value)
    assert message == "OperationalError: no such table: no_such_table"
    assert "SELECT" not in message and "hunter2" not in message


def test_text_postgresql_cannot_store_is_refused_as_a_client_error(postgres_engine: Any) -> None:
    """The net under the text rule: a NUL that reached the database is a 422 message, not a 500
    (psycopg refuses it before sending; an escaped \\u0000 in jsonb is SQLSTATE 22P05)."""
    from sqlalchemy.exc import DataError

    from app.core.errors import refused_value

    for statement, value in (
        ("SELECT CAST(:v AS text)", "a\x00b"),
        ("SELECT CAST(:v AS jsonb)", '{"a": "\\u0000"}'),
    ):
        with postgres_engine.connect() as connection, pytest.raises(DataError) as caught:
            connection.execute(text(statement), {"v": value})
        assert refused_value(caught.value) == (
            "Text in the request holds characters the service cannot store."
        ), caught.value


def test_both_bounds_of_a_page_point_at_the_same_query_parameter(client: ApiClient) -> None:
    for limit in (0, 100_000):
        problem = assert_problem(client.get("/api/v1/comparisons", params={"limit": limit}), 422)
        assert problem["errors"][0]["pointer"] == "/query/limit", problem
        assert problem["detail"].startswith("/query/limit: ")
