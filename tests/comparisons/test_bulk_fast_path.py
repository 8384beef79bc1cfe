"""The bulk JSON fast path (plain-dict validation) accepts exactly what the models accept."""

from typing import Any

import pytest
from pydantic import ValidationError

from app.comparisons.routes import _fast_rows
from app.comparisons.schemas import ComparisonCreate
from app.comparisons.service import rows_from_payloads

CRITERIA = {"largely_recommended", "reliability"}
GOOD: dict[str, Any] = {
    "user_id": "alice",
    "video_a": "yt:b",
    "video_b": "yt:a",
    "criteria_scores": [{"criterion": "largely_recommended", "score": 4}],
}


def variant(**changes: Any) -> dict[str, Any]:
    return {**GOOD, **changes}


def scores(*items: dict[str, Any]) -> dict[str, Any]:
    return variant(criteria_scores=list(items))


CASES = [
    GOOD,
    variant(user_id="  padded  "),
    variant(user_id=""),
    variant(user_id="bad id"),
    variant(video_b="yt:b"),
    variant(extra=1),
    variant(criteria_scores=[]),
    scores(*({"criterion": f"c{i}", "score": 0} for i in range(65))),
    scores({"criterion": "largely_recommended", "score": 10}),
    scores({"criterion": "largely_recommended", "score": -10.5}),
    scores({"criterion": "largely_recommended", "score": 40, "score_max": 50}),
    scores({"criterion": "largely_recommended", "score": 40, "score_max": None}),
    scores({"criterion": "largely_recommended", "score": 1, "score_max": 0}),
    scores({"criterion": "largely_recommended", "score": 1, "score_max": 1001}),
    scores({"criterion": "largely_recommended", "score": "3"}),
    scores({"criterion": "largely_recommended", "score": "three"}),
    scores({"criterion": "largely_recommended", "score": float("nan")}),
    scores({"criterion": "largely_recommended", "score": True}),
    scores({"criterion": "largely_recommended", "score": 1, "weight": 2}),
    scores({"criterion": "Largely", "score": 1}),
    scores({"criterion": "unknown_one", "score": 1}),
    scores(
        {"criterion": "largely_recommended", "score": 1}, {"criterion": "reliability", "score": 2}
    ),
    scores({"criterion": "reliability", "score": 1}, {"criterion": "reliability", "score": 2}),
    variant(criteria_scores="largely_recommended"),
    "not an object",
]


def models_path(raw: list[Any]) -> list[Any] | None:
    """The reference: every row through the models, then the criteria check."""
    try:
        payloads = [ComparisonCreate.model_validate(item) for item in raw]
    except ValidationError:
        return None
    rows, errors = rows_from_payloads(payloads, CRITERIA)
    return None if errors else rows


@pytest.mark.parametrize("case", range(len(CASES)))
def test_the_fast_path_agrees_with_the_models(case: int) -> None:
    raw = [GOOD, CASES[case]]
    assert _fast_rows(raw, CRITERIA) == models_path(raw)


def test_the_fast_path_is_taken_for_a_valid_list() -> None:
    rows = _fast_rows([GOOD, variant(user_id="bob")], CRITERIA)
    assert rows is not None and [(r.user, r.video_a, r.score) for r in rows] == [
        ("alice", "yt:a", -4.0),
        ("bob", "yt:a", -4.0),
    ]
