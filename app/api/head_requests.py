"""HEAD answered on every GET route, as RFC 9110 asks of a server that supports GET: the request
runs as a GET and the answer goes out without its body."""

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HeadAsGet:
    """ASGI middleware running `HEAD` requests as `GET` and dropping the response body.

    It wraps the whole application, CORS included, so authentication, rate limits, CORS and
    routing treat a HEAD exactly as the GET it stands for (a path without GET stays a 405), and
    the status and headers (Content-Length, Content-Type, ETag…) are the GET's. FastAPI's
    routes list GET only; registering HEAD on them would add an operation per route to the
    OpenAPI document.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        finished = False

        async def headers_only(message: Message) -> None:
            nonlocal finished
            if message["type"] == "http.response.start":
                await send(message)
            elif message["type"].startswith("http.response."):
                # The body's chunks (or a file's path) are dropped; its end is still signalled.
                if not finished and not message.get("more_body", False):
                    finished = True
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
            else:
                await send(message)

        # A copy: the server keeps its own scope, so its access log and its framing of the
        # answer (no body after a HEAD's headers) still see HEAD.
        await self.app({**scope, "method": "GET"}, receive, headers_only)
