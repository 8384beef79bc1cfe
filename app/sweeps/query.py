"""Trial filter and sort language for sweep_trials, compiled to SQLAlchemy with bound parameters.

Filter grammar (keywords are case-insensitive)::

    expr       := term (OR term)*
    term       := factor (AND factor)*
    factor     := NOT factor | '(' expr ')' | comparison
    comparison := field op value | field [NOT] IN '(' value (',' value)* ')'
                | field BETWEEN value AND value
    op         := = | != | < | <= | > | >=
    field      := params.<name> | metrics.<name> | status | source | id | number | objective | tag
    value      := number | 'string' | "string" | bare_word | true | false | null

Semantics:

- Every comparison is two-valued: it is false, never unknown, for a row that lacks the value, so
  `NOT` is the exact complement (`NOT params.w > 1` matches rows without `w`).
- A JSON value compares only with a value of its own kind: `params.w < 1` never matches a row
  whose `w` is a string. The kind is checked before the value is cast, because a cast of the
  wrong kind yields 0 on SQLite and aborts the whole query on PostgreSQL.
- `x != v` and `x NOT IN (...)` match rows that have a value for `x` and whose value differs;
  `x = null` matches rows without one (missing key, JSON null or SQL NULL).
- `tag = t` is membership in the comma-delimited `tags_text`; `tag != t` is non-membership.

Error positions are 0-based character offsets into the text.
"""

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

MAX_LENGTH = 2000
MAX_DEPTH = 20
STATUSES = ("pending", "running", "succeeded", "pruned", "failed", "cancelled")
SOURCES = ("grid", "sampler", "baseline", "rerun")

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# After "params." everything up to a delimiter belongs to the name, so that a malformed name is
# reported as such instead of as whatever token its first odd character would start.
_DOTTED_TAIL = re.compile(r"\.[^\s()=!<>,]*")
_SORT_ITEM = re.compile(r"\s*([-+]?)\s*(.*?)\s*\Z", re.DOTALL)
_KEYWORDS = frozenset({"and", "or", "not", "in", "between", "true", "false", "null"})
_OPERATORS = ("<=", ">=", "!=", "=", "<", ">")
_FIELDS_HELP = "params.<name>, metrics.<name>, status, source, id, number, objective or tag"
_SORT_FIELDS_HELP = "params.<name>, metrics.<name>, status, source, id, number or objective"

Kind = Literal["number", "string", "boolean", "null"]


class FilterError(ValueError):
    """A filter or sort text that cannot be compiled; the message is one line."""


# --- JSON value kinds ---------------------------------------------------------------------------


class _JsonKindIs(FunctionElement[bool]):
    """True when the JSON value under a key has this kind; false (not NULL) when it is missing."""

    type = sa.Boolean()
    inherit_cache = True
    sqlite_types: ClassVar[tuple[str, ...]]
    postgresql_types: ClassVar[tuple[str, ...]]


class _IsJsonNumber(_JsonKindIs):
    inherit_cache = True
    sqlite_types = ("integer", "real")
    postgresql_types = ("number",)


class _IsJsonString(_JsonKindIs):
    inherit_cache = True
    sqlite_types = ("text",)
    postgresql_types = ("string",)


class _IsJsonBoolean(_JsonKindIs):
    inherit_cache = True
    sqlite_types = ("true", "false")
    postgresql_types = ("boolean",)


class _IsJsonValue(_JsonKindIs):
    inherit_cache = True
    sqlite_types = ("integer", "real", "text", "true", "false", "array", "object")
    postgresql_types = ("number", "string", "boolean", "array", "object")


def _index_of(element: _JsonKindIs) -> sa.BinaryExpression[Any]:
    (index,) = element.clauses.clauses
    assert isinstance(index, sa.BinaryExpression)
    return index


def _quoted(names: tuple[str, ...]) -> str:
    return ", ".join(f"'{name}'" for name in names)  # class constants, never user text


@compiles(_IsJsonNumber)
@compiles(_IsJsonString)
@compiles(_IsJsonBoolean)
@compiles(_IsJsonValue)
def _kind_is_sqlite(element: _JsonKindIs, compiler: SQLCompiler, **kw: Any) -> str:
    """SQLite's form, also used to print an expression without a dialect."""
    index = _index_of(element)
    # The right side is the key's bind parameter; SQLite's JSON index type renders it as a path.
    column = compiler.process(index.left, **kw)
    path = compiler.process(index.right, **kw)
    return f"coalesce(json_type({column}, {path}) IN ({_quoted(element.sqlite_types)}), 0)"


@compiles(_IsJsonNumber, "postgresql")
@compiles(_IsJsonString, "postgresql")
@compiles(_IsJsonBoolean, "postgresql")
@compiles(_IsJsonValue, "postgresql")
def _kind_is_postgresql(element: _JsonKindIs, compiler: SQLCompiler, **kw: Any) -> str:
    # The cast to json makes one function serve both json and jsonb columns.
    value = compiler.process(_index_of(element), **kw)
    kinds = _quoted(element.postgresql_types)
    return f"coalesce(json_typeof(CAST({value} AS JSON)) IN ({kinds}), false)"


# --- tokens -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Token:
    kind: Literal["number", "string", "word", "op", "(", ")", ",", "end"]
    text: str
    pos: int
    value: Any = None


def _found(token: _Token) -> str:
    """`, found '<token>'` for an error message; nothing at the end of the text."""
    if token.kind == "end":
        return ""
    text = token.text if len(token.text) <= 30 else token.text[:27] + "..."
    return f", found {text!r}"


class _Lexer:
    """Tokens on demand, so the first error in reading order is the one reported."""

    def __init__(self, text: str, what: str) -> None:
        self.text = text
        self.what = what
        self.pos = 0
        self._peeked: _Token | None = None

    def error(self, message: str, pos: int, detail: str = "") -> FilterError:
        return _error(self.what, message, pos, detail)

    def peek(self) -> _Token:
        if self._peeked is None:
            self._peeked = self._read()
        return self._peeked

    def next(self) -> _Token:
        token = self.peek()
        self._peeked = None
        return token

    def _read(self) -> _Token:
        text = self.text
        while self.pos < len(text) and text[self.pos].isspace():
            self.pos += 1
        start = self.pos
        if start >= len(text):
            return _Token("end", "", start)
        char = text[start]
        if char == "(":
            self.pos += 1
            return _Token("(", char, start)
        if char == ")":
            self.pos += 1
            return _Token(")", char, start)
        if char == ",":
            self.pos += 1
            return _Token(",", char, start)
        for op in _OPERATORS:
            if text.startswith(op, start):
                self.pos += len(op)
                return _Token("op", op, start)
        if char in "'\"":
            return self._string(char, start)
        if char.isdigit() or (char in "+-." and start + 1 < len(text)):
            match = _NUMBER.match(text, start)
            if match:
                end = match.end()
                if end < len(text) and (text[end].isalnum() or text[end] in "_."):
                    run = re.match(r"[-+]?[A-Za-z0-9_.]*", text[start:])
                    raise self.error("malformed number", start, f": {run.group()!r}" if run else "")
                self.pos = end
                raw = match.group()
                value: int | float
                if re.fullmatch(r"[-+]?\d+", raw):
                    value = int(raw)
                else:
                    value = float(raw)
                    if value in (float("inf"), float("-inf")):
                        raise self.error("number out of range", start, f": {raw!r}")
                return _Token("number", raw, start, value)
        match = _WORD.match(text, start)
        if match:
            end = match.end()
            tail = _DOTTED_TAIL.match(text, end)
            if tail:
                end = tail.end()
            self.pos = end
            return _Token("word", text[start:end], start)
        raise self.error(f"unexpected character {char!r}", start)

    def _string(self, quote: str, start: int) -> _Token:
        chars: list[str] = []
        pos = start + 1
        text = self.text
        while pos < len(text):
            char = text[pos]
            if char == "\\" and pos + 1 < len(text):
                chars.append(text[pos + 1])
                pos += 2
            elif char == quote:
                self.pos = pos + 1
                return _Token("string", text[start : pos + 1], start, "".join(chars))
            else:
                chars.append(char)
                pos += 1
        raise self.error(f"unterminated string (opened with {quote})", start)


# --- fields -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Value:
    kind: Kind
    value: Any
    token: _Token


@dataclass(frozen=True)
class _Field:
    """How one field reads its value of each kind, and whether a row has a value at all."""

    label: str
    typed: Callable[[Kind], sa.ColumnElement[Any] | None]  # None: no such kind for this field
    present: sa.ColumnElement[bool] | None  # None: always present
    maybe_missing: bool  # comparisons need an IS NOT NULL guard to stay two-valued
    ordered: bool = True  # < <= > >= BETWEEN allowed
    allowed: tuple[str, ...] | None = None  # the only valid string values


def _json_field(column: sa.ColumnElement[Any], name: str, label: str) -> _Field:
    index = column[name]

    def typed(kind: Kind) -> sa.ColumnElement[Any] | None:
        # CASE, not AND: PostgreSQL does not promise to test the kind before casting otherwise.
        if kind == "number":
            return sa.case((_IsJsonNumber(index), index.as_float()))
        if kind == "string":
            return sa.case((_IsJsonString(index), index.as_string()))
        if kind == "boolean":
            return sa.case((_IsJsonBoolean(index), index.as_boolean()))
        return None

    return _Field(label, typed, _IsJsonValue(index), maybe_missing=True)


def _column_field(
    column: sa.ColumnElement[Any],
    kind: Kind,
    label: str,
    *,
    ordered: bool = True,
    allowed: tuple[str, ...] | None = None,
) -> _Field:
    nullable = bool(getattr(column, "nullable", True))
    return _Field(
        label,
        typed=lambda wanted: column if wanted == kind else None,
        present=column.is_not(None) if nullable else None,
        maybe_missing=nullable,
        ordered=ordered,
        allowed=allowed,
    )


def _resolve(token: _Token, table: sa.Table, what: str) -> _Field | None:
    """The field a word names; None for `tag`, which is handled on its own."""
    sort = what == "sort"
    help_text = _SORT_FIELDS_HELP if sort else _FIELDS_HELP
    if token.kind != "word":
        raise _error(what, "expected a field", token.pos, f"{_found(token)} (fields: {help_text})")
    word = token.text
    head, dot, name = word.partition(".")
    head = head.lower()
    if dot:
        if head not in ("params", "metrics"):
            raise _error(what, f"unknown field {word!r}", token.pos, f" (fields: {help_text})")
        if not _NAME.match(name):
            raise _error(
                what,
                f"invalid name {name!r} after '{head}.'",
                token.pos + len(head) + 1,
                " (names match [A-Za-z_][A-Za-z0-9_]*)",
            )
        return _json_field(table.c[head], name, f"{head}.{name}")
    if head in ("status", "source"):
        allowed = STATUSES if head == "status" else SOURCES
        return _column_field(table.c[head], "string", head, ordered=False, allowed=allowed)
    if head in ("id", "number", "objective"):
        return _column_field(table.c[head], "number", head)
    if head == "tag" and not sort:
        return None
    if head == "tag":
        raise _error(what, "cannot sort by tag", token.pos)
    raise _error(what, f"unknown field {word!r}", token.pos, f" (fields: {help_text})")


# --- filter -------------------------------------------------------------------------------------


def _guard(
    field: _Field, expr: sa.ColumnElement[Any], cond: sa.ColumnElement[bool]
) -> sa.ColumnElement[bool]:
    """`cond` made false, not NULL, for rows without a value, so that NOT stays a complement."""
    return sa.and_(expr.is_not(None), cond) if field.maybe_missing else cond


class _FilterParser:
    def __init__(self, text: str, table: sa.Table) -> None:
        self.lexer = _Lexer(text, "filter")
        self.table = table

    def error(self, message: str, pos: int, detail: str = "") -> FilterError:
        return self.lexer.error(message, pos, detail)

    def is_keyword(self, token: _Token, keyword: str) -> bool:
        return token.kind == "word" and token.text.lower() == keyword

    def parse(self) -> sa.ColumnElement[bool]:
        if self.lexer.peek().kind == "end":
            return sa.true()
        expr = self.expr(0)
        token = self.lexer.peek()
        if token.kind != "end":
            raise self.error("expected AND, OR or end of filter", token.pos, _found(token))
        return expr

    def expr(self, depth: int) -> sa.ColumnElement[bool]:
        terms = [self.term(depth)]
        while self.is_keyword(self.lexer.peek(), "or"):
            self.lexer.next()
            terms.append(self.term(depth))
        return terms[0] if len(terms) == 1 else sa.or_(*terms)

    def term(self, depth: int) -> sa.ColumnElement[bool]:
        factors = [self.factor(depth)]
        while self.is_keyword(self.lexer.peek(), "and"):
            self.lexer.next()
            factors.append(self.factor(depth))
        return factors[0] if len(factors) == 1 else sa.and_(*factors)

    def factor(self, depth: int) -> sa.ColumnElement[bool]:
        token = self.lexer.peek()
        if self.is_keyword(token, "not") or token.kind == "(":
            if depth >= MAX_DEPTH:
                raise self.error(f"nesting deeper than {MAX_DEPTH} levels", token.pos)
            self.lexer.next()
            if token.kind == "word":
                return sa.not_(self.factor(depth + 1))
            inner = self.expr(depth + 1)
            closing = self.lexer.next()
            if closing.kind != ")":
                raise self.error("expected ')'", closing.pos, _found(closing))
            return inner
        return self.comparison()

    def comparison(self) -> sa.ColumnElement[bool]:
        field_token = self.lexer.next()
        if field_token.kind == "word" and field_token.text.lower() in _KEYWORDS:
            raise self.error(
                "expected a field",
                field_token.pos,
                f"{_found(field_token)} (fields: {_FIELDS_HELP})",
            )
        field = _resolve(field_token, self.table, "filter")
        label = field.label if field else "tag"
        token = self.lexer.next()
        if token.kind == "op":
            value = self.value(after=token)
            if field is None:
                return self.tag_compare(token, [value])
            return self.compare(field, token, value)
        if self.is_keyword(token, "in"):
            values = self.value_list(token)
            return self.tag_compare(token, values) if field is None else self.in_(field, values)
        if self.is_keyword(token, "not"):
            keyword = self.lexer.next()
            if not self.is_keyword(keyword, "in"):
                raise self.error("expected IN after NOT", keyword.pos, _found(keyword))
            values = self.value_list(keyword)
            if field is None:
                return sa.not_(self.tag_compare(keyword, values))
            return self.not_in(field, values)
        if self.is_keyword(token, "between"):
            low = self.value(after=token)
            keyword = self.lexer.next()
            if not self.is_keyword(keyword, "and"):
                raise self.error("expected AND in BETWEEN", keyword.pos, _found(keyword))
            high = self.value(after=keyword)
            if field is None:
                raise self.error("tag does not support BETWEEN", token.pos)
            return self.between(field, token, low, high)
        raise self.error(
            f"expected an operator after {label!r}",
            token.pos,
            f"{_found(token)} (operators: =, !=, <, <=, >, >=, IN, NOT IN, BETWEEN)",
        )

    def value(self, *, after: _Token) -> _Value:
        token = self.lexer.next()
        if token.kind == "number":
            return _Value("number", token.value, token)
        if token.kind == "string":
            return _Value("string", token.value, token)
        if token.kind == "word":
            lowered = token.text.lower()
            if lowered in ("true", "false"):
                return _Value("boolean", lowered == "true", token)
            if lowered == "null":
                return _Value("null", None, token)
            if lowered not in _KEYWORDS and _NAME.match(token.text):
                return _Value("string", token.text, token)
            if lowered not in _KEYWORDS:
                raise self.error(
                    f"expected a value after {after.text!r}",
                    token.pos,
                    f"{_found(token)} (quote strings that are not plain words)",
                )
        raise self.error(f"expected a value after {after.text!r}", token.pos, _found(token))

    def value_list(self, keyword: _Token) -> list[_Value]:
        opening = self.lexer.next()
        if opening.kind != "(":
            raise self.error(
                f"expected '(' after {keyword.text.upper()}", opening.pos, _found(opening)
            )
        values = [self.value(after=opening)]
        while True:
            token = self.lexer.next()
            if token.kind == ")":
                return values
            if token.kind != ",":
                raise self.error("expected ',' or ')'", token.pos, _found(token))
            values.append(self.value(after=token))

    # --- building -----------------------------------------------------------------------------

    def typed(self, field: _Field, value: _Value) -> sa.ColumnElement[Any]:
        allowed = field.allowed
        if allowed is not None and value.kind == "string" and value.value not in allowed:
            raise self.error(
                f"unknown {field.label} {value.value!r}",
                value.token.pos,
                f" (one of: {', '.join(allowed)})",
            )
        expr = field.typed(value.kind)
        if expr is None:
            wanted = "numbers" if field.typed("number") is not None else "strings"
            raise self.error(
                f"{field.label} compares with {wanted}",
                value.token.pos,
                f", found {value.kind} {value.token.text}",
            )
        return expr

    def present(self, field: _Field) -> sa.ColumnElement[bool]:
        return sa.true() if field.present is None else field.present

    def equals(self, field: _Field, value: _Value) -> sa.ColumnElement[bool]:
        if value.kind == "null":
            return sa.not_(self.present(field))
        expr = self.typed(field, value)
        return _guard(field, expr, expr == value.value)

    def compare(self, field: _Field, op: _Token, value: _Value) -> sa.ColumnElement[bool]:
        if op.text == "=":
            return self.equals(field, value)
        if op.text == "!=":
            if value.kind == "null":
                return self.present(field)
            return sa.and_(self.present(field), sa.not_(self.equals(field, value)))
        self.check_ordered(field, op, value)
        expr = self.typed(field, value)
        operators: dict[str, Callable[[Any, Any], Any]] = {
            "<": lambda a, b: a < b,
            "<=": lambda a, b: a <= b,
            ">": lambda a, b: a > b,
            ">=": lambda a, b: a >= b,
        }
        return _guard(field, expr, operators[op.text](expr, value.value))

    def check_ordered(self, field: _Field, op: _Token, value: _Value) -> None:
        if value.kind in ("null", "boolean"):
            raise self.error(
                f"{value.kind} compares only with = or !=, not {op.text.upper()}", value.token.pos
            )
        if not field.ordered:
            raise self.error(
                f"{field.label} compares only with =, !=, IN or NOT IN, not {op.text.upper()}",
                op.pos,
            )

    def in_(self, field: _Field, values: Sequence[_Value]) -> sa.ColumnElement[bool]:
        by_kind: dict[Kind, list[_Value]] = {}
        for value in values:
            by_kind.setdefault(value.kind, []).append(value)
        parts: list[sa.ColumnElement[bool]] = []
        for kind, group in by_kind.items():
            if kind == "null":
                parts.append(sa.not_(self.present(field)))
                continue
            exprs = [self.typed(field, value) for value in group]
            expr = exprs[0]
            parts.append(_guard(field, expr, expr.in_([value.value for value in group])))
        return parts[0] if len(parts) == 1 else sa.or_(*parts)

    def not_in(self, field: _Field, values: Sequence[_Value]) -> sa.ColumnElement[bool]:
        return sa.and_(self.present(field), sa.not_(self.in_(field, values)))

    def between(
        self, field: _Field, keyword: _Token, low: _Value, high: _Value
    ) -> sa.ColumnElement[bool]:
        self.check_ordered(field, keyword, low)
        self.check_ordered(field, keyword, high)
        if low.kind != high.kind:
            raise self.error(
                f"BETWEEN bounds differ in kind: {low.kind} and {high.kind}", high.token.pos
            )
        expr = self.typed(field, low)
        return _guard(field, expr, expr.between(low.value, high.value))

    def tag_compare(self, op: _Token, values: Sequence[_Value]) -> sa.ColumnElement[bool]:
        if op.text not in ("=", "!=") and op.kind == "op":
            raise self.error(f"tag compares only with =, !=, IN or NOT IN, not {op.text}", op.pos)
        column = self.table.c.tags_text
        matches: list[sa.ColumnElement[bool]] = []
        for value in values:
            if value.kind != "string":
                raise self.error(
                    "tag compares with strings",
                    value.token.pos,
                    f", found {value.kind} {value.token.text} (quote it)",
                )
            if "," in value.value or not value.value:
                raise self.error("a tag is never empty and never contains ','", value.token.pos)
            # autoescape keeps % and _ in a tag literal; coalesce keeps NOT two-valued.
            haystack = sa.func.coalesce(column, ",")
            matches.append(haystack.contains(f",{value.value},", autoescape=True))
        matched = matches[0] if len(matches) == 1 else sa.or_(*matches)
        return sa.not_(matched) if op.text == "!=" else matched


def parse_filter(text: str, table: sa.Table) -> sa.ColumnElement[bool]:
    """Compile a filter over `table` (sweep_trials' columns); empty text matches every row."""
    _check_length("filter", text)
    return _FilterParser(text, table).parse()


# --- sort ---------------------------------------------------------------------------------------


def parse_sort(text: str, table: sa.Table) -> list[sa.UnaryExpression[Any]]:
    """Compile `field, -field, ...` into ORDER BY terms; rows without a value sort last in both
    directions, and `id` ascending always ends the list as a tie-breaker.

    A JSON field sorts numbers first, then strings, then booleans, then rows without a value.
    An empty text sorts by `id` alone.
    """
    _check_length("sort", text)
    order: list[sa.UnaryExpression[Any]] = []
    if text.strip():
        seen: set[str] = set()
        pos = 0
        for item in text.split(","):
            parts = _SORT_ITEM.match(item)
            assert parts is not None  # the pattern matches any text
            descending = parts.group(1) == "-"
            body = parts.group(2)
            field_pos = pos + parts.start(2)
            match = _WORD.match(body)
            if not match:
                found = f", found {body[:30]!r}" if body else ""
                raise _error(
                    "sort", "expected a field", field_pos, f"{found} (fields: {_SORT_FIELDS_HELP})"
                )
            tail = _DOTTED_TAIL.match(body, match.end())
            word = body[: tail.end() if tail else match.end()]
            field = _resolve(_Token("word", word, field_pos), table, "sort")
            assert field is not None  # sort=True raises for tag
            if len(word) < len(body):
                rest = body[len(word) :].lstrip()
                raise _error(
                    "sort",
                    "expected ',' or end of sort",
                    field_pos + len(body) - len(rest),
                    f", found {rest[:30]!r}",
                )
            if field.label in seen:
                raise _error("sort", f"field {field.label!r} is listed twice", field_pos)
            seen.add(field.label)
            order.extend(_order_terms(field, descending))
            pos += len(item) + 1
    order.append(table.c.id.asc())
    return order


def _order_terms(field: _Field, descending: bool) -> list[sa.UnaryExpression[Any]]:
    exprs = [field.typed(kind) for kind in ("number", "string", "boolean")]
    terms = []
    for expr in exprs:
        if expr is None:
            continue
        term = expr.desc() if descending else expr.asc()
        terms.append(term.nulls_last() if field.maybe_missing else term)
    return terms


def _error(what: str, message: str, pos: int, detail: str = "") -> FilterError:
    return FilterError(f"{what}: {message} at position {pos}{detail}")


def _check_length(what: str, text: str) -> None:
    if len(text) > MAX_LENGTH:
        raise FilterError(f"{what}: longer than {MAX_LENGTH} characters ({len(text)})")
