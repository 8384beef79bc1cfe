"""Domain errors and their rendering as RFC 9457 `application/problem+json` responses."""

import logging
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

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
        return problem_response(
            request,
            status=exc.status_code,
            slug=_slug_for_status(exc.status_code),
            detail=str(exc.detail),
            headers=getattr(exc, "headers", None),
        )

    async def _out_of_range(request: Request, exc: Exception) -> JSONResponse:
        if not _number_out_of_range(exc):
            return await _unexpected(request, exc)
        # An id or count beyond the database's integer range (PostgreSQL raises 22003, SQLite's
        # driver OverflowError): the request is at fault, and nothing was written.
        return problem_response(
            request,
            status=422,
            slug="validation-error",
            detail="A number in the request is outside the range the service stores.",
        )

    app.add_exception_handler(OverflowError, _out_of_range)
    app.add_exception_handler(DataError, _out_of_range)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(
            request, status=500, slug="internal-error", detail="An unexpected error occurred."
        )


def _number_out_of_range(exc: BaseException) -> bool:
    if isinstance(exc, OverflowError):
        return True
    original = getattr(exc, "orig", None)
    return getattr(original, "sqlstate", None) == "22003"
