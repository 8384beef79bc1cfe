"""JSON request bodies: their media type checked, and parsed with their nesting bounded, so no
body can exhaust the stack; every JSON route answers a bad body with the same problems."""

from typing import Any

from pydantic_core import from_json

from app.core.errors import InvalidInput, UnsupportedMediaType

JSON = "application/json"
# RFC 8259 forbids a sender's byte order mark but lets a parser ignore one; Windows tools write it.
UTF8_BOM = b"\xef\xbb\xbf"


def media_type(content_type: str | None) -> str:
    """A Content-Type header's media type, lower-cased, without parameters ('' for none)."""
    return (content_type or "").split(";")[0].strip().lower()


def is_json(media: str) -> bool:
    """`application/json` or a JSON-based `application/*+json` (what FastAPI parses as JSON)."""
    return media == JSON or (media.startswith("application/") and media.endswith("+json"))


def unsupported_media_type(media: str, *accepted: str) -> UnsupportedMediaType:
    """The 415 for a body sent as `media` to a route taking only `accepted`."""
    sent = repr(media) if media else "a body without a Content-Type header"
    return UnsupportedMediaType(f"Send {' or '.join(accepted)}, not {sent}.")


def parse_json(body: bytes) -> Any:
    """The body's JSON value; 422 for anything that is not JSON or nests deeper than ~200 levels.

    pydantic-core's parser stops at its recursion limit while parsing (the standard library's
    recurses until Python's stack limit and raises RecursionError, a 500). It takes UTF-8 only,
    and integers of any length; a leading UTF-8 byte order mark is skipped.
    """
    try:
        return from_json(body[len(UTF8_BOM) :] if body.startswith(UTF8_BOM) else body)
    except ValueError as exc:  # UnicodeDecodeError included
        raise InvalidInput(
            f"Body is not valid JSON: {exc}",
            errors=[{"loc": ["body"], "pointer": "/", "message": str(exc), "type": "json_invalid"}],
        ) from exc
