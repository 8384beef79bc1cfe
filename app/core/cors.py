"""CORS for pages on other origins: listed origins may do everything, `*` only anonymous reads.

Starlette's CORSMiddleware treats `*` as "every origin may do everything", which cannot say that
any page may read public scores while only the service's own frontends may send credentials or
write; hence this small middleware. It wraps the whole application, server-error handler
included, so every answer (401, 413, 429, 500 problems too) carries the headers a browser needs
to let the page read it.
"""

from collections.abc import Iterable

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.errors import problem_response

SAFE_METHODS = frozenset({"GET", "HEAD"})
ALLOWED_METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE"
# Headers a page may read besides the CORS-safelisted ones: where a created resource is, its
# version, when to retry after a 429 or 503, the rate limit, an export's file name.
EXPOSED_HEADERS = (
    "Location, ETag, Retry-After, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset,"
    " Content-Disposition, X-Request-ID"
)
# Request headers that carry credentials: never allowed to an origin only `*` admits.
CREDENTIAL_HEADERS = frozenset({"authorization", "cookie"})
PREFLIGHT_MAX_AGE = "600"


class Cors:
    """ASGI middleware answering preflights and marking responses for allowed origins."""

    def __init__(self, app: ASGIApp, origins: Iterable[str]) -> None:
        self.app = app
        origins = list(origins)
        self.any_origin_reads = "*" in origins
        self.listed = frozenset(origin for origin in origins if origin != "*")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if (
            origin is not None
            and scope["method"] == "OPTIONS"
            and "access-control-request-method" in headers
        ):
            await self._preflight(scope, receive, send, origin, headers)
            return
        allowed: list[tuple[str, str]] = []
        if origin is not None and origin in self.listed:
            allowed = [
                ("Access-Control-Allow-Origin", origin),
                ("Access-Control-Allow-Credentials", "true"),
                ("Access-Control-Expose-Headers", EXPOSED_HEADERS),
            ]
        elif (
            origin is not None
            and self.any_origin_reads
            and scope["method"] in SAFE_METHODS
            and not CREDENTIAL_HEADERS & set(headers.keys())
        ):
            allowed = [
                ("Access-Control-Allow-Origin", "*"),
                ("Access-Control-Expose-Headers", EXPOSED_HEADERS),
            ]

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                response_headers = MutableHeaders(scope=message)
                for name, value in allowed:
                    response_headers[name] = value
                # The answer depends on Origin even when it carries no CORS header: a cache must
                # not hand an origin-less answer to a page (or one origin's to another).
                response_headers.add_vary_header("Origin")
            await send(message)

        await self.app(scope, receive, send_with_cors)

    async def _preflight(
        self, scope: Scope, receive: Receive, send: Send, origin: str, headers: Headers
    ) -> None:
        method = headers["access-control-request-method"].strip().upper()
        requested = [
            name.strip().lower()
            for name in headers.get("access-control-request-headers", "").split(",")
            if name.strip()
        ]
        answer: dict[str, str] | None = None
        if origin in self.listed and method in ALLOWED_METHODS.split(", "):
            answer = {
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Credentials": "true",
                "Access-Control-Allow-Methods": ALLOWED_METHODS,
            }
        elif (
            self.any_origin_reads
            and method in SAFE_METHODS
            and not CREDENTIAL_HEADERS & set(requested)
        ):
            answer = {
                "Access-Control-Allow-Origin": "*",
                "Access-Control-Allow-Methods": ", ".join(sorted(SAFE_METHODS)),
            }
        vary = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
        if answer is None:
            # No Access-Control-Allow-Origin: the browser refuses the request it asked about.
            response = problem_response(
                Request(scope),
                status=403,
                slug="cors-preflight-refused",
                detail=(
                    f"Origin {origin} may not send {method}"
                    + (f" with {', '.join(requested)}" if requested else "")
                    + " (see CORS_ALLOW_ORIGINS)."
                ),
                headers={"Vary": vary},
            )
            await response(scope, receive, send)
            return
        if requested:
            answer["Access-Control-Allow-Headers"] = ", ".join(requested)
        answer["Access-Control-Max-Age"] = PREFLIGHT_MAX_AGE
        answer["Vary"] = vary
        await send({"type": "http.response.start", "status": 204, "headers": _raw(answer)})
        await send({"type": "http.response.body", "body": b""})


def _raw(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [
        (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()
    ]
