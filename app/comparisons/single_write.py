"""`POST /api/v1/comparisons` without FastAPI's routing, dependency and response machinery.

A single write is the API's hottest request, and most of its CPU went to the framework around the
write: matching the route, solving the three dependencies, validating the returned model against
the response model, and the wrappers each of those brings. This middleware serves the ordinary
request itself (JSON body, a recently verified key or token with the scope, a payload that
validates) the way the route would, its user rules (`bound`) included, and hands every other
request to the route unchanged: a missing, unknown or unverified credential, a missing scope, a
body that is not JSON or does not validate, another content type, a query string, dependency
overrides (tests). The route stays the reference: it documents the endpoint, and it produces every
error answer but those the write itself and `bound` raise, which this middleware renders with the
application's own exception handlers.

It sits inside the body-size limit and the Prometheus middleware, so those see every request.
"""

import inspect
from typing import Any

from anyio import to_thread
from pydantic import TypeAdapter, ValidationError
from pydantic_core import from_json
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.rate_limits import WRITES, RateLimits
from app.comparisons.routes import (
    WRITE_SCOPE,
    bound,
    single_writes_limiter,
    write_and_commit,
)
from app.comparisons.schemas import ComparisonCreate, ComparisonWriteResult
from app.comparisons.write_groups import grouped, write_groups
from app.core.db import request_transaction
from app.core.errors import TooManyRequests
from app.identity.security import cached_principal

_result_adapter = TypeAdapter(ComparisonWriteResult)


class SingleWriteFastPath:
    """Serves `POST {path}`, the mount point of the comparisons router's create route."""

    def __init__(self, app: ASGIApp, path: str) -> None:
        self.app = app
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] != self.path
            or scope["method"] != "POST"
            or scope.get("query_string")
            or scope.get("root_path")
            or scope["app"].dependency_overrides
        ):
            await self.app(scope, receive, send)
            return
        authorization = content_type = None
        for name, value in scope["headers"]:
            # The first of repeated headers, as Starlette's `Headers.get` takes it.
            if name == b"authorization" and authorization is None:
                authorization = value
            elif name == b"content-type" and content_type is None:
                content_type = value
        principal = cached_principal(authorization.decode("latin-1")) if authorization else None
        if (
            principal is None
            or not principal.has(WRITE_SCOPE)
            or content_type != b"application/json"
        ):
            await self.app(scope, receive, send)
            return
        # The route's writes limit (see app/api/rate_limits.py), counted here as routing would.
        rate_limits: RateLimits | None = getattr(scope["app"].state, "rate_limits", None)
        if rate_limits is not None:
            try:
                await rate_limits.check((WRITES,), principal, Request(scope))
            except TooManyRequests as exc:
                limited = await _handled(scope, receive, exc)
                if limited is None:
                    raise
                await limited(scope, receive, send)
                return
        body = await _read_body(receive)
        try:
            # pydantic-core's parser bounds the nesting (the standard library's would recurse
            # until RecursionError); a refused body goes to the route, which answers the problem.
            payload = ComparisonCreate.model_validate(from_json(body))
        except (ValueError, ValidationError):  # UnicodeDecodeError included
            await self.app(scope, _replay(body, receive), send)
            return
        try:
            # The route's user rules: a user credential's own user, never another.
            result = await _write(bound(payload, principal))
        except Exception as exc:
            response = await _handled(scope, receive, exc)
            if response is None:
                raise
        else:
            # What the route answers: the status it sets, the response model's JSON.
            response = Response(
                _result_adapter.dump_json(result, by_alias=True),
                status_code=201 if result.created else 200,
                media_type="application/json",
            )
        await response(scope, receive, send)


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """`receive` for the route, the body already read handed back first."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _write(payload: ComparisonCreate) -> ComparisonWriteResult:
    """The route's write, with the request session's commit-or-roll-back of `get_session`."""
    if grouped():
        return await write_groups().write(payload)
    async with request_transaction() as session:
        return await to_thread.run_sync(
            write_and_commit, session, payload, limiter=single_writes_limiter()
        )


async def _handled(scope: Scope, receive: Receive, exc: Exception) -> Response | None:
    """The response the application's exception handlers give `exc` on the route (None when it is
    left to the server-error handler, as Starlette's ExceptionMiddleware leaves it)."""
    handlers: dict[Any, Any] = scope["app"].exception_handlers
    # The nearest handled class, as Starlette's ExceptionMiddleware looks it up.
    handler: Any = next(
        (handlers[cls] for cls in type(exc).__mro__ if cls in handlers and cls is not Exception),
        None,
    )
    if handler is None:
        return None
    request = Request(scope, receive)
    response: Response = (
        await handler(request, exc)
        if inspect.iscoroutinefunction(handler)
        else await run_in_threadpool(handler, request, exc)
    )
    return response
