"""A fixed-rate HTTP/1.1 load generator: open loop over keep-alive connections, each latency taken
from the request's scheduled start, so a lagging client or server shows up in the figures."""

import asyncio
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when it is installed: it halves the client's CPU per request."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


@dataclass
class OpenLoopResult:
    sent: int
    statuses: dict[int, int] = field(default_factory=dict)  # status code -> count; 0: no answer
    latencies: list[float] = field(default_factory=list)  # seconds, of the expected answers
    send_lags: list[float] = field(default_factory=list)  # seconds from schedule to the write
    elapsed: float = 0.0

    @property
    def failed(self) -> int:
        return self.sent - len(self.latencies)

    @property
    def served_rate(self) -> float:
        """Expected answers per second, from the first scheduled send to the last answer."""
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def exchange(self, request: bytes) -> int:
        """Send one request and read its whole answer; returns the status code."""
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if length:
            await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


def post_request(host: str, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    """The bytes of one keep-alive JSON POST."""
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", "Content-Type: application/json"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def open_loop(
    host: str,
    port: int,
    requests: list[bytes],
    *,
    rate: float,
    expected: frozenset[int] = frozenset({200, 201}),
    connections: int = 32,
    timeout: float = 10.0,
    warm_up: list[bytes] | None = None,
) -> OpenLoopResult:
    """Send `requests` at `rate` per second whatever the answers do, over at most
    `connections` keep-alive connections (a request waits for a free one, and that wait counts).
    `warm_up` requests go first, unmeasured, to open the connections."""
    idle: asyncio.Queue[_Connection | None] = asyncio.Queue()
    for _ in range(connections):
        idle.put_nowait(None)  # opened on first use
    result = OpenLoopResult(sent=len(requests))

    async def send(request: bytes, scheduled: float, *, record: bool = True) -> None:
        connection = await idle.get()
        status = 0
        try:
            if connection is None:
                connection = _Connection(*await asyncio.open_connection(host, port))
            if record:
                result.send_lags.append(time.perf_counter() - scheduled)
            async with asyncio.timeout(timeout):
                status = await connection.exchange(request)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            if connection is not None:
                connection.close()
            connection = None
        finally:
            idle.put_nowait(connection)
        if not record:
            return
        result.statuses[status] = result.statuses.get(status, 0) + 1
        if status in expected:
            result.latencies.append(time.perf_counter() - scheduled)

    if warm_up:
        now = time.perf_counter()
        await asyncio.gather(*(send(request, now, record=False) for request in warm_up))
    tasks = []
    started = time.perf_counter()
    for index, request in enumerate(requests):
        scheduled = started + index / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(request, scheduled)))
    await asyncio.gather(*tasks)
    result.elapsed = time.perf_counter() - started
    while not idle.empty():
        connection = idle.get_nowait()
        if connection is not None:
            connection.close()
    return result
