"""Route class for the routes whose body FastAPI parses as a model: the body's media type is
checked and its JSON parsed as the bulk routes parse theirs (app/core/json_body.py), so a form or
text body is a 415 rather than a 422 about the body not being an object, and a body that is not
JSON the bulk routes' 422 rather than FastAPI's 400 or a byte offset given as a pointer."""

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import params
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

from app.core.json_body import JSON, is_json, media_type, parse_json, unsupported_media_type

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class JsonRequest(Request):
    """A request whose `json()` is `parse_json`'s (FastAPI reads the body through it)."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_json(await self.body())
        return self._json


class JsonBodyRoute(APIRoute):
    """An APIRoute whose JSON body is checked and parsed before FastAPI's own handler runs."""

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()
        if self.body_field is None or isinstance(self.body_field.field_info, params.Form):
            return handler

        async def parsed_first(request: Request) -> Response:
            request = JsonRequest(request.scope, request.receive)
            # An empty body is left to the model ("Field required" when the body is required).
            if await request.body():
                media = media_type(request.headers.get("content-type"))
                if not is_json(media):
                    raise unsupported_media_type(media, JSON)
                # Parsed here, where a refusal reaches the exception handlers as it is: inside
                # FastAPI's handler any parse error becomes a 400; there the value is cached.
                await request.json()
            return await handler(request)

        return parsed_first
