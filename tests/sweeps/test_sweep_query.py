"""The trial filter and sort language, run against real rows on SQLite and PostgreSQL."""

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Engine

from app.sweeps.query import MAX_DEPTH, FilterError, parse_filter, parse_sort
from tests.conftest import PG_ADMIN_URL, service_missing

PG_URL = PG_ADMIN_URL.rsplit("/", 1)[0] + "/test"

# id: params, metrics, status, source, objective, tags_text
ROWS = {
    1: (
        {"w": 0.5, "lr_node": 0.9, "solver": "converged", "warm": True},
        {"acc": 0.71, "loss": 0.6},
        "succeeded",
        "grid",
        0.71,
        ",fast,baseline,",
    ),
    2: (
        {"w": 1.0, "lr_node": 0.5, "solver": "diverged", "warm": False},
        {"acc": 0.65, "loss": 0.7},
        "succeeded",
        "sampler",
        0.65,
        ",slow,",
    ),
    3: ({"w": 2, "solver": "converged"}, {"acc": 0.80}, "succeeded", "sampler", 0.80, ",fast,"),
    4: ({"lr_node": 0.1, "solver": "converged", "warm": True}, {}, "failed", "baseline", None, ","),
    5: (
        {"w": "auto", "solver": "max_iter"},
        {"acc": 0.5, "loss": 0.9},
        "pruned",
        "rerun",
        0.5,
        ",fast_100%,",
    ),
    6: (
        {"w": 0.25, "lr_node": 0.9, "solver": "converged", "warm": False, "note": None},
        {"acc": 0.75, "loss": 0.55},
        "running",
        "grid",
        None,
        ",fastx,",
    ),
}
ALL = set(ROWS)


@dataclass
class Trials:
    engine: Engine
    table: sa.Table

    def ids(self, text: str) -> set[int]:
        query = sa.select(self.table.c.id).where(parse_filter(text, self.table))
        with self.engine.connect() as connection:
            return {int(row[0]) for row in connection.execute(query)}

    def ordered(self, text: str) -> list[int]:
        query = sa.select(self.table.c.id).order_by(*parse_sort(text, self.table))
        with self.engine.connect() as connection:
            return [int(row[0]) for row in connection.execute(query)]


def make_table(name: str, json_type: sa.types.TypeEngine[object]) -> sa.Table:
    return sa.Table(
        name,
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("sweep_id", sa.Integer, nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("params", json_type, nullable=False),
        sa.Column("metrics", json_type, nullable=False),
        sa.Column("objective", sa.Float, nullable=True),
        sa.Column("tags_text", sa.String(2000), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


@pytest.fixture(
    scope="module",
    params=[
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.postgres),
        pytest.param("postgresql-jsonb", marks=pytest.mark.postgres),
    ],
)
def trials(request: pytest.FixtureRequest) -> Iterator[Trials]:
    name = f"qtest_trials_{uuid.uuid4().hex[:12]}"
    if request.param == "sqlite":
        engine = sa.create_engine("sqlite://")
        json_type: sa.types.TypeEngine[object] = sa.JSON()
    else:
        engine = sa.create_engine(PG_URL)
        json_type = JSONB() if request.param.endswith("jsonb") else sa.JSON()
        try:
            with engine.connect():
                pass
        except sa.exc.OperationalError as exc:
            engine.dispose()
            service_missing("PostgreSQL", exc)
    table = make_table(name, json_type)
    table.metadata.create_all(engine)
    now = datetime.now(UTC)
    rows = [
        {
            "id": trial_id,
            "sweep_id": 1,
            "number": trial_id * 10,
            "params": params,
            "metrics": metrics,
            "status": status,
            "source": source,
            "objective": objective,
            "tags_text": tags,
            "created_at": now,
        }
        for trial_id, (params, metrics, status, source, objective, tags) in ROWS.items()
    ]
    with engine.begin() as connection:
        connection.execute(table.insert(), rows)
    try:
        yield Trials(engine, table)
    finally:
        table.metadata.drop_all(engine)
        engine.dispose()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ALL),
        ("status = succeeded OR status = failed AND source = baseline", {1, 2, 3, 4}),
        ("(status = succeeded OR status = failed) AND source = sampler", {2, 3}),
        ("source = sampler AND params.w > 1.5 OR metrics.acc < 0.7", {2, 3, 5}),
        ("source = sampler AND (params.w > 1.5 OR metrics.acc < 0.7)", {2, 3}),
        ("status = succeeded AND params.w > 0.6 OR source = rerun", {2, 3, 5}),
        ("Status = succeeded aNd params.w In (1, 2)", {2, 3}),
        ("((id = 1))", {1}),
    ],
)
def test_precedence_and_parentheses(trials: Trials, text: str, expected: set[int]) -> None:
    assert trials.ids(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("NOT status = succeeded", {4, 5, 6}),
        ("not (status = succeeded or status = running)", {4, 5}),
        ("NOT NOT source = grid", {1, 6}),
        ("NOT source = grid AND params.warm = true", {4}),
        # A comparison is false for a row without the value, so NOT is its complement.
        ("NOT params.w > 0.6", {1, 4, 5, 6}),
        ("NOT params.missing = 1", ALL),
        ("NOT objective > 0.6", {4, 5, 6}),
        ("NOT (params.w > 0.6 OR status = failed)", {1, 5, 6}),
    ],
)
def test_not(trials: Trials, text: str, expected: set[int]) -> None:
    assert trials.ids(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("params.solver IN (converged, 'max_iter')", {1, 3, 4, 5, 6}),
        ("params.solver NOT IN (converged)", {2, 5}),
        ("params.lr_node IN (0.9, 0.1)", {1, 4, 6}),
        ("params.lr_node NOT IN (0.9)", {2, 4}),
        ("params.w IN (2, 'auto')", {3, 5}),
        ("params.w IN (0.5, null)", {1, 4}),
        ("params.w NOT IN (0.5, 1, 'auto')", {3, 6}),
        ("status IN (pruned, failed)", {4, 5}),
        ("id IN (1, 3)", {1, 3}),
        ("id NOT IN (1, 3)", {2, 4, 5, 6}),
        ("tag = fast", {1, 3}),
        ("tag != fast", {2, 4, 5, 6}),
        ("tag IN (slow, baseline)", {1, 2}),
        ("tag NOT IN (fast, slow)", {4, 5, 6}),
        ("tag = 'fast_100%'", {5}),
        ("tag = 'f_st'", set()),
        ("tag = '%'", set()),
        ("tag = fastx AND NOT tag = fast", {6}),
    ],
)
def test_in_and_tags(trials: Trials, text: str, expected: set[int]) -> None:
    assert trials.ids(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("params.w BETWEEN 0.5 AND 1", {1, 2}),
        ("metrics.acc BETWEEN 0.7 AND 0.8", {1, 3, 6}),
        ("objective BETWEEN 0.6 AND 0.75", {1, 2}),
        ("params.w between 0 and 10 and status = succeeded", {1, 2, 3}),
        ("number BETWEEN 20 AND 40", {2, 3, 4}),
        ("params.solver BETWEEN 'a' AND 'd'", {1, 3, 4, 6}),
    ],
)
def test_between(trials: Trials, text: str, expected: set[int]) -> None:
    assert trials.ids(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("params.solver = 'converged'", {1, 3, 4, 6}),
        ('params.solver = "converged"', {1, 3, 4, 6}),
        ("params.solver = converged", {1, 3, 4, 6}),
        ("params.solver != converged", {2, 5}),
        ("params.solver > 'd'", {2, 5}),
        ("params.w = 'auto'", {5}),
        ("params.w = '0.5'", set()),
        ('params.solver = "it\'s" OR params.solver = \'say \\"hi\\"\'', set()),
        ("status = succeeded", {1, 2, 3}),
        ("source != grid", {2, 3, 4, 5}),
    ],
)
def test_string_equality(trials: Trials, text: str, expected: set[int]) -> None:
    assert trials.ids(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("params.warm = true", {1, 4}),
        ("params.warm = FALSE", {2, 6}),
        ("params.warm != true", {2, 6}),
        ("params.warm IN (true, false)", {1, 2, 4, 6}),
        ("params.solver = true", set()),
        ("params.warm = 1", set()),
    ],
)
def test_boolean(trials: Trials, text: str, expected: set[int]) -> None:
    assert trials.ids(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Row 4 lacks w, row 5 holds a string: neither matches a numeric comparison.
        ("params.w > 0.4", {1, 2, 3}),
        ("params.w < 1", {1, 6}),
        ("params.w <= 1", {1, 2, 6}),
        ("params.w >= 2", {3}),
        ("params.w = 2.0", {3}),
        ("params.w != 0.5", {2, 3, 5, 6}),
        ("params.solver < 1", set()),
        ("params.lr_node < 1", {1, 2, 4, 6}),
        ("metrics.loss > 0", {1, 2, 5, 6}),
        ("params.missing = 1", set()),
        ("params.missing != 1", set()),
        ("params.missing < 1 OR params.missing >= 1", set()),
        ("objective > 0.6", {1, 2, 3}),
        ("objective != 0.5", {1, 2, 3}),
        ("number > 20 AND number <= 50", {3, 4, 5}),
        ("id >= -1", ALL),
        ("objective = null", {4, 6}),
        ("objective != NULL", {1, 2, 3, 5}),
        ("params.note = null", ALL),
        ("params.w = null", {4}),
        ("params.w != null", {1, 2, 3, 5, 6}),
    ],
)
def test_comparisons_and_missing_keys(trials: Trials, text: str, expected: set[int]) -> None:
    assert trials.ids(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", [1, 2, 3, 4, 5, 6]),
        ("-metrics.acc", [3, 6, 1, 2, 5, 4]),
        ("metrics.acc", [5, 2, 1, 6, 3, 4]),
        ("+metrics.acc", [5, 2, 1, 6, 3, 4]),
        ("objective", [5, 2, 1, 3, 4, 6]),
        ("-objective", [3, 1, 2, 5, 4, 6]),
        # Numbers, then strings, then rows without the key, in both directions.
        ("params.w", [6, 1, 2, 3, 5, 4]),
        ("-params.w", [3, 2, 1, 6, 5, 4]),
        ("params.warm", [2, 6, 1, 4, 3, 5]),
        ("-params.warm", [1, 4, 2, 6, 3, 5]),
        (" source , - objective ", [4, 1, 6, 5, 3, 2]),
        ("params.lr_node, -id", [4, 2, 6, 1, 5, 3]),
        ("-status, -number", [3, 2, 1, 6, 5, 4]),
    ],
)
def test_sort(trials: Trials, text: str, expected: list[int]) -> None:
    assert trials.ordered(text) == expected


def test_sort_ends_with_id_ascending(trials: Trials) -> None:
    order = parse_sort("-metrics.acc", trials.table)
    last = order[-1]
    assert last.element is trials.table.c.id
    assert str(last.compile(dialect=sqlite.dialect())).endswith("ASC")
    assert len(parse_sort("", trials.table)) == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("metrics.acc >=", "filter: expected a value after '>=' at position 14"),
        ("metrics.acc >= )", "filter: expected a value after '>=' at position 15, found ')'"),
        ("status = succeeded AND", "filter: expected a field at position 22"),
        ("(status = succeeded", "filter: expected ')' at position 19"),
        (
            "status = succeeded)",
            "filter: expected AND, OR or end of filter at position 18, found ')'",
        ),
        ("status ~ failed", "filter: unexpected character '~' at position 7"),
        ("params.w > 'abc", "filter: unterminated string (opened with ') at position 11"),
        ("foo = 1", "filter: unknown field 'foo' at position 0"),
        ("params.w IN ()", "filter: expected a value after '(' at position 13, found ')'"),
        ("params.w IN (1 2)", "filter: expected ',' or ')' at position 15, found '2'"),
        ("params.w IN 1", "filter: expected '(' after IN at position 12, found '1'"),
        ("params.w NOT 1", "filter: expected IN after NOT at position 13, found '1'"),
        ("params.w BETWEEN 1 2", "filter: expected AND in BETWEEN at position 19, found '2'"),
        (
            "params.w BETWEEN 1 AND 'x'",
            "filter: BETWEEN bounds differ in kind: number and string at position 23",
        ),
        ("params.w 1", "filter: expected an operator after 'params.w' at position 9, found '1'"),
        ("status = 3", "filter: status compares with strings at position 9, found number 3"),
        ("id = 'x'", "filter: id compares with numbers at position 5, found string 'x'"),
        ("status = sucess", "filter: unknown status 'sucess' at position 9 (one of: pending,"),
        (
            "status > a",
            "filter: status compares only with =, !=, IN or NOT IN, not > at position 7",
        ),
        ("tag > a", "filter: tag compares only with =, !=, IN or NOT IN, not > at position 4"),
        ("tag = 3", "filter: tag compares with strings at position 6, found number 3 (quote it)"),
        ("tag = 'a,b'", "filter: a tag is never empty and never contains ',' at position 6"),
        ("params.w > true", "filter: boolean compares only with = or !=, not > at position 11"),
        ("objective < null", "filter: null compares only with = or !=, not < at position 12"),
        ("params.w = v1.2", "filter: expected a value after '=' at position 11, found 'v1.2'"),
        ("params.w = and", "filter: expected a value after '=' at position 11, found 'and'"),
        ("params.w > 1.2.3", "filter: malformed number at position 11: '1.2.3'"),
        ("params.w > 1e999", "filter: number out of range at position 11: '1e999'"),
        ("metrics.a.b = 1", "filter: invalid name 'a.b' after 'metrics.' at position 8"),
        ("params. = 1", "filter: invalid name '' after 'params.' at position 7"),
        ("AND id = 1", "filter: expected a field at position 0, found 'AND'"),
    ],
)
def test_parse_errors(trials: Trials, text: str, message: str) -> None:
    with pytest.raises(FilterError) as caught:
        parse_filter(text, trials.table)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tag", "sort: cannot sort by tag at position 0"),
        ("-foo", "sort: unknown field 'foo' at position 1"),
        ("id,,number", "sort: expected a field at position 3"),
        ("- params.x y", "sort: expected ',' or end of sort at position 11, found 'y'"),
        ("params.w, -params.w", "sort: field 'params.w' is listed twice at position 11"),
        ("params.$", "sort: invalid name '$' after 'params.' at position 7"),
        ("*", "sort: expected a field at position 0, found '*'"),
    ],
)
def test_sort_errors(trials: Trials, text: str, message: str) -> None:
    with pytest.raises(FilterError) as caught:
        parse_sort(text, trials.table)
    assert str(caught.value).startswith(message)


def test_limits(trials: Trials) -> None:
    deepest = "(" * MAX_DEPTH + "id = 1" + ")" * MAX_DEPTH
    assert trials.ids(deepest) == {1}
    with pytest.raises(FilterError, match=r"nesting deeper than 20 levels at position 20"):
        parse_filter("(" + deepest + ")", trials.table)
    with pytest.raises(FilterError, match=r"nesting deeper than 20 levels at position 80"):
        parse_filter("NOT " * (MAX_DEPTH + 1) + "id = 1", trials.table)
    assert trials.ids("NOT " * MAX_DEPTH + "id = 1") == {1}
    long_or = " OR ".join(f"id = {i}" for i in range(150))
    assert len(long_or) <= 2000
    assert trials.ids(long_or) == ALL
    with pytest.raises(FilterError, match=r"^filter: longer than 2000 characters \(2001\)$"):
        parse_filter("x" * 2001, trials.table)
    with pytest.raises(FilterError, match=r"^sort: longer than 2000 characters"):
        parse_sort("id," * 700, trials.table)


def test_injection_is_rejected_and_values_are_bound(trials: Trials) -> None:
    with pytest.raises(FilterError, match=r"invalid name .* after 'params\.' at position 7"):
        parse_filter("params.w'); DROP TABLE x; -- = 1", trials.table)
    with pytest.raises(FilterError, match=r"invalid name"):
        parse_sort("-params.w'); DROP TABLE x; --", trials.table)
    hostile = "x'); DROP TABLE qtest; --"
    expr = parse_filter(f'params.solver = "{hostile}" OR tag = "{hostile}"', trials.table)
    for dialect in (sqlite.dialect(), postgresql.dialect()):
        compiled = expr.compile(dialect=dialect)
        assert "DROP" not in str(compiled)
        assert "solver" not in str(compiled)
        assert "solver" in compiled.params.values()
    with trials.engine.connect() as connection:
        assert connection.execute(sa.select(trials.table.c.id).where(expr)).all() == []
        assert sa.inspect(connection).has_table(trials.table.name)
