"""Route class that checks a route's own dependencies (the API key and its scope) before FastAPI
reads and parses the request body, so an unauthenticated client cannot make the service parse
16 MB of JSON only to be told 401."""

from contextlib import AsyncExitStack

from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import get_parameterless_sub_dependant, solve_dependencies
from fastapi.exceptions import RequestValidationError
from starlette.requests import Request
from starlette.responses import Response

from app.api.json_route import Handler, JsonBodyRoute

# Where FastAPI keeps the exit stacks of a request's dependencies.
_STACKS = ("fastapi_inner_astack", "fastapi_function_astack")


class AuthFirstRoute(JsonBodyRoute):
    """A JsonBodyRoute whose `dependencies=[…]` run before its body is read (and its media type
    checked), when it has a body.

    They run again with the handler's own dependencies; the second check of a key is a hit of
    the verified-key cache (no database lookup).
    """

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()
        if self.body_field is None or not self.dependencies:
            return handler
        checks = Dependant(
            dependencies=[
                get_parameterless_sub_dependant(depends=depends, path=self.path_format)
                for depends in self.dependencies
            ]
        )

        async def checked_first(request: Request) -> Response:
            scope = request.scope
            saved = {name: scope[name] for name in _STACKS}
            # A stack of their own: what the checks open (a database session) closes before the
            # handler runs, rather than being held to the end of the request.
            async with AsyncExitStack() as stack:
                scope.update(dict.fromkeys(_STACKS, stack))
                try:
                    solved = await solve_dependencies(
                        request=request,
                        dependant=checks,
                        # the application's overrides (tests), as the handler's dependencies get
                        dependency_overrides_provider=scope["app"],
                        async_exit_stack=stack,
                        embed_body_fields=False,
                    )
                finally:
                    scope.update(saved)
            if solved.errors:
                raise RequestValidationError(solved.errors)
            return await handler(request)

        return checked_first
