"""Request ids: each request gets one (the client's X-Request-ID when sane), bound to its logs,
stored with the runs and sweeps it creates, and echoed in the response's X-Request-ID."""

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.logs import bound, new_request_id, sane_request_id

HEADER = "X-Request-ID"
_HEADER_KEY = HEADER.lower().encode()


class RequestId:
    """Outermost application middleware, so every response carries the id, problems included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = next(
            (value for key, value in scope.get("headers") or [] if key == _HEADER_KEY), None
        )
        request_id = (
            sane_request_id(incoming.decode("latin-1") if incoming is not None else None)
            or new_request_id()
        )

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[HEADER] = request_id
            await send(message)

        with bound(request_id=request_id):
            await self.app(scope, receive, send_with_id)
