"""The OpenAPI document as the service answers: every error response an `application/problem+json`
Problem, the codes each operation can answer, the API key as a bearer scheme, the page cap."""

from http import HTTPStatus
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

from app.core.config import get_settings
from app.core.errors import PROBLEM_MEDIA_TYPE

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}


class Problem(BaseModel):
    """An RFC 9457 problem document, as every error of the API is answered."""

    model_config = ConfigDict(extra="allow", title="Problem")

    type: str = Field(description="URI naming the kind of problem")
    title: str = Field(description="the status's phrase")
    status: int = Field(ge=400, le=599)
    detail: str = Field(description="what went wrong, for a person")
    instance: str = Field(description="the request's path")
    errors: list[dict[str, Any]] | None = Field(
        default=None,
        description="each invalid field (pointer, message, type) or row (row, field, message)",
    )


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for the error codes a route answers beyond those every operation of its kind
    does (the document gives each a Problem body)."""
    return {status: {"description": HTTPStatus(status).phrase} for status in statuses}


def _implied_statuses(path: str, operation: dict[str, Any]) -> set[int]:
    """Codes an operation answers because of its shape: a key (401, 403), an id in the path or a
    criterion to look up (404), parameters or a body to validate (422, a body that is not JSON
    included), a body (413, and 415 for a media type the route does not take)."""
    parameters = operation.get("parameters", [])
    names = {p["name"] for p in parameters}
    statuses = set()
    if any(_is_authorization(p) for p in parameters):
        statuses |= {401, 403}
    if "{" in path or "criterion" in names:
        statuses.add(404)
    if parameters or "requestBody" in operation:
        statuses.add(422)
    if "requestBody" in operation:
        statuses |= {413, 415}
    return statuses


# One bearer scheme for keys and tokens alike (the docs pages' Authorize button uses it too).
SECURITY_SCHEME = "bearerAuth"
BEARER_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "description": "An API key (`lk_…`, `licchavi api-key create`) or a token of the identity"
    " provider, given as `Authorization: Bearer <credential>`.",
}


def _is_authorization(parameter: dict[str, Any]) -> bool:
    return bool(parameter["in"] == "header" and parameter["name"].lower() == "authorization")


def _with_problems(schema: dict[str, Any], page_max_limit: int) -> dict[str, Any]:
    components = schema.setdefault("components", {})
    components.setdefault("schemas", {})["Problem"] = Problem.model_json_schema()
    components.setdefault("securitySchemes", {})[SECURITY_SCHEME] = BEARER_SCHEME
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            for status in _implied_statuses(path, operation):
                responses.setdefault(str(status), {"description": HTTPStatus(status).phrase})
            for status, response in responses.items():
                if status.isdigit() and int(status) >= 400:
                    response["content"] = {PROBLEM_MEDIA_TYPE: {"schema": PROBLEM_REF}}
            parameters = [p for p in operation.get("parameters", []) if not _is_authorization(p)]
            if "401" in responses:
                # The credential is the bearer scheme's (the docs' Authorize button), not a
                # header parameter of the operation.
                operation["security"] = [{SECURITY_SCHEME: []}]
                if parameters:
                    operation["parameters"] = parameters
                else:
                    operation.pop("parameters", None)
            for parameter in parameters:
                if parameter["in"] == "query" and parameter["name"] == "limit":
                    parameter["schema"]["maximum"] = page_max_limit
    # FastAPI's own validation-error shapes are not what the service answers.
    for name in ("HTTPValidationError", "ValidationError"):
        components["schemas"].pop(name, None)
    return schema


def install_openapi(app: FastAPI) -> None:
    """Make `app.openapi()` (and so `/openapi.json`, `/docs`) give the document above."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _with_problems(build(), get_settings().page_max_limit)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
