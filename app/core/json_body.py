"""JSON request bodies parsed with their nesting bounded, so no body can exhaust the stack."""

from typing import Any

from pydantic_core import from_json

from app.core.errors import InvalidInput


def parse_json(body: bytes) -> Any:
    """The body's JSON value; 422 for anything that is not JSON or nests deeper than ~200 levels.

    pydantic-core's parser stops at its recursion limit while parsing (the standard library's
    recurses until Python's stack limit and raises RecursionError, a 500).
    """
    try:
        return from_json(body)
    except ValueError as exc:  # UnicodeDecodeError included
        raise InvalidInput(f"Body is not valid JSON: {exc}") from exc
