"""Domain errors and their rendering as RFC 9457 `application/problem+json` responses."""

import logging
import sqlite3
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, DBAPIError, InterfaceError, OperationalError, StatementError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://licchavi.dev/problems/"

logger = logging.getLogger(__name__)


class ServiceError(Exception):
    """An error the API reports as a problem document; raise a subclass, never build responses."""

    status: int = 400
    slug: str = "bad-request"

    def __init__(
        self,
        detail: str,
        *,
        errors: Sequence[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = list(errors) if errors is not None else None
        self.headers = headers


class InvalidInput(ServiceError):
    status, slug = 422, "validation-error"


class NotAuthenticated(ServiceError):
    status, slug = 401, "not-authenticated"


class Forbidden(ServiceError):
    status, slug = 403, "forbidden"


class NotFound(ServiceError):
    status, slug = 404, "not-found"


class Conflict(ServiceError):
    status, slug = 409, "conflict"


class Gone(ServiceError):
    status, slug = 410, "gone"


class PayloadTooLarge(ServiceError):
    status, slug = 413, "payload-too-large"


class UnsupportedMediaType(ServiceError):
    status, slug = 415, "unsupported-media-type"


class TooManyRequests(ServiceError):
    status, slug = 429, "too-many-requests"


class ServiceUnavailable(ServiceError):
    status, slug = 503, "service-unavailable"


def problem_response(
    request: Request,
    *,
    status: int,
    slug: str,
    detail: str,
    errors: Sequence[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + slug,
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
    }
    if errors is not None:
        body["errors"] = list(errors)
    if extra:
        body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def _slug_for_status(status: int) -> str:
    return HTTPStatus(status).phrase.lower().replace(" ", "-").replace("'", "")


def validation_errors(raw: Sequence[Any]) -> list[dict[str, Any]]:
    """Pydantic/FastAPI errors as `{loc, pointer, message, type}` with a JSON-pointer-like path."""
    out = []
    for err in raw:
        loc = [str(part) for part in err.get("loc", ())]
        out.append(
            {
                "loc": loc,
                "pointer": "/" + "/".join(loc[1:] if loc and loc[0] == "body" else loc),
                "message": err.get("msg", "invalid"),
                "type": err.get("type", "value_error"),
            }
        )
    return out


def install_error_handlers(app: FastAPI) -> None:
    """Render every error, expected or not, as a problem document."""

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return problem_response(
            request,
            status=exc.status,
            slug=exc.slug,
            detail=exc.detail,
            errors=exc.errors,
            headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = validation_errors(exc.errors())
        first = errors[0] if errors else {"pointer": "/", "message": "invalid request"}
        return problem_response(
            request,
            status=422,
            slug="validation-error",
            detail=f"{first['pointer']}: {first['message']}",
            errors=errors,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            # Starlette names the methods of the first route on the path only; a path served by
            # several routes (GET and POST /comparisons) allows all of theirs.
            headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request))}
        return problem_response(
            request,
            status=exc.status_code,
            slug=_slug_for_status(exc.status_code),
            detail=str(exc.detail),
            headers=headers,
        )

    async def _out_of_range(request: Request, exc: Exception) -> JSONResponse:
        refused = refused_value(exc)
        if refused is None:
            return await _unexpected(request, exc)
        # A value the database cannot store: the request is at fault, and nothing was written.
        logger.info("refused value on %s %s: %s", request.method, request.url.path, exc)
        return problem_response(request, status=422, slug="validation-error", detail=refused)

    app.add_exception_handler(OverflowError, _out_of_range)
    app.add_exception_handler(DataError, _out_of_range)

    async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
        if database_out_of_reach(exc):
            # Down, restarting, cut off, or the transaction broken by the server (a deadlock,
            # a cancelled statement): rolled back, so the request can be sent again as it was.
            logger.warning(
                "database unavailable on %s %s: %s",
                request.method,
                request.url.path,
                public_error(exc),
            )
            detail = "The database is unavailable; nothing was changed. Retry shortly."
            retry_after = UNAVAILABLE_RETRY_AFTER_SECONDS
        elif database_busy(exc):
            # SQLite's bounded wait for another process's write ran out; the transaction was
            # rolled back, so the request can be sent again as it was.
            detail = "The database is busy with other writes; nothing was changed. Retry shortly."
            retry_after = BUSY_RETRY_AFTER_SECONDS
        else:
            return await _unexpected(request, exc)
        return problem_response(
            request,
            status=503,
            slug="service-unavailable",
            detail=detail,
            headers={"Retry-After": str(retry_after)},
        )

    app.add_exception_handler(OperationalError, _database_unavailable)
    # A pooled connection the server dropped fails as an InterfaceError ("connection closed").
    app.add_exception_handler(InterfaceError, _database_unavailable)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(
            request, status=500, slug="internal-error", detail="An unexpected error occurred."
        )


# SQLite's SQLITE_BUSY and SQLITE_LOCKED, the primary codes of "database is locked" errors.
_SQLITE_BUSY_CODES = frozenset({5, 6})
BUSY_RETRY_AFTER_SECONDS = 1


UNAVAILABLE_RETRY_AFTER_SECONDS = 5


def database_out_of_reach(exc: BaseException) -> bool:
    """True when PostgreSQL could not be reached or could not serve the transaction (the driver's
    OperationalError: connection refused or lost, server shutting down, deadlock, cancelled), or
    when a pooled connection turned out to be dead. SQLite's operational errors are the file's
    (a missing table is a fault, not an outage) and stay apart."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(getattr(exc, "orig", None), _driver_operational_errors())


def _driver_operational_errors() -> tuple[type[BaseException], ...]:
    try:
        import psycopg
    except ImportError:  # an installation on SQLite alone
        return ()
    return (psycopg.OperationalError,)


def database_unavailable(exc: BaseException) -> bool:
    """Whether a retry may overcome `exc`: PostgreSQL out of reach (`database_out_of_reach`) or
    SQLite busy with another writer (`database_busy`), rather than a statement at fault (a
    missing table, a constraint)."""
    return database_out_of_reach(exc) or database_busy(exc)


def database_busy(exc: BaseException) -> bool:
    """True when `exc` is SQLite giving up on a lock another connection holds."""
    original = getattr(exc, "orig", exc)
    if not isinstance(original, sqlite3.OperationalError):
        return False
    code = getattr(original, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _SQLITE_BUSY_CODES
    return "locked" in str(original)


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the application serves on the request's path (HEAD wherever
    GET is: the application answers HEAD as GET)."""
    routes = request.app.router.routes
    served = {
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    }
    if "GET" in served:
        served.add("HEAD")
    return [method for method in _METHODS if method in served]


# SQLSTATEs of values the database refuses to store, with what the client is told.
_REFUSED_SQLSTATES = {
    # an id or count beyond the integer range (SQLite's driver raises OverflowError instead)
    "22003": "A number in the request is outside the range the service stores.",
    # text the database's encoding cannot hold (NUL, \u0000 in JSON): the schemas refuse control
    # characters first; this is the net under anything they do not cover
    "22021": "Text in the request holds characters the service cannot store.",
    "22P05": "Text in the request holds characters the service cannot store.",
}


def refused_value(exc: BaseException) -> str | None:
    """What to tell the client about a value the database refused; None for any other error."""
    if isinstance(exc, OverflowError):
        return _REFUSED_SQLSTATES["22003"]
    original = getattr(exc, "orig", None)
    sqlstate = getattr(original, "sqlstate", None)
    if sqlstate in _REFUSED_SQLSTATES:
        return _REFUSED_SQLSTATES[sqlstate]
    if sqlstate is None and "NUL" in str(original):
        # psycopg refuses a NUL byte in a text parameter before sending it
        return _REFUSED_SQLSTATES["22021"]
    return None


def public_error(exc: BaseException) -> str:
    """A failure as stored and served in public `error` fields: the exception's class and the
    first line of its message, never a database statement or its parameters (those go to the
    logs, with the traceback)."""
    original = getattr(exc, "orig", None)
    if isinstance(exc, StatementError) and original is not None:
        # SQLAlchemy's message carries the statement and its parameters after the driver's own.
        exc = original
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    name = type(exc).__name__
    return f"{name}: {message}"[:500] if message else name
