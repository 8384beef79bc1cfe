"""Abuse limits for a public frontend: writes and expensive requests counted per credential, per
user and (without a credential) per client address, with the `limits` library.

Counters live in the Celery broker's Redis when there is one, so every API process shares them,
and in process memory on the embedded default. Routes are limited by one app-wide dependency
(`enforce_rate_limits`) and by the single-write fast path, which bypasses routing.
"""

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from limits import RateLimitItem, parse_many
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string
from starlette.concurrency import run_in_threadpool

from app.comparisons import routes as comparisons
from app.core.config import Settings
from app.core.db import SessionDep
from app.core.errors import NotAuthenticated, TooManyRequests
from app.identity.security import Principal, authenticate, cached_principal
from app.runs import routes as runs
from app.sweeps import routes as sweeps

logger = logging.getLogger(__name__)

WRITES = "writes"
EXPENSIVE = "expensive"
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

# Requests costing far more than a page of rows: many rows parsed and written, a training run or
# sweep started, a plot drawn, a whole table exported, a bootstrap computed. They count against
# RATE_LIMIT_EXPENSIVE (RATE_LIMIT_ANONYMOUS_EXPENSIVE per address without a credential) on top
# of RATE_LIMIT_WRITES for the writes among them. Named by endpoint, so a renamed route cannot
# silently drop out; keep the README's list in step.
EXPENSIVE_ENDPOINTS: frozenset[Callable[..., Any]] = frozenset(
    {
        comparisons.create_comparisons_bulk,
        runs.create_run,
        runs.get_metrics,
        runs.loss_plot,
        runs.scores_plot,
        sweeps.submit_sweep,
        sweeps.retry_failed,
        sweeps.rerun_trial,
        sweeps.export_trials,
        sweeps.leaderboard,
        sweeps.compare,
        sweeps.plot_data,
        sweeps.plot_png,
    }
)


def categories(method: str, endpoint: Callable[..., Any] | None) -> tuple[str, ...]:
    """The limits a request with `method` to the route serving `endpoint` counts against."""
    found: list[str] = []
    if method in WRITE_METHODS:
        found.append(WRITES)
    if endpoint in EXPENSIVE_ENDPOINTS:
        found.append(EXPENSIVE)
    return tuple(found)


def rate_limit_keys(principal: Principal | None, request: Request) -> list[str]:
    """Whom a request is counted for: its credential and its user, or its client address."""
    if principal is None:
        host = request.client.host if request.client is not None else "unknown"
        return [f"address:{host}"]
    # Principals that name their credential and user (`credential`, `user_id`) are keyed by
    # them; one that has only its API key's id, by that id.
    credential = getattr(principal, "credential", None)
    if credential is None:
        credential = f"key:{getattr(principal, 'key_id')}"  # noqa: B009
    keys = [f"credential:{credential}"]
    user = getattr(principal, "user_id", None)
    if user is not None:
        keys.append(f"user:{user}")
    return keys


@dataclass(frozen=True)
class _Limits:
    authenticated: list[RateLimitItem]
    anonymous: list[RateLimitItem]


class RateLimits:
    """The configured limits and their counters, for one application."""

    def __init__(self, settings: Settings) -> None:
        writes = parse_many(settings.rate_limit_writes)
        self.limits = {
            # Writes without a valid credential (answered 401 by the route) count per address.
            WRITES: _Limits(authenticated=writes, anonymous=writes),
            EXPENSIVE: _Limits(
                parse_many(settings.rate_limit_expensive),
                parse_many(settings.rate_limit_anonymous_expensive),
            ),
        }
        self.storage_uri, self.storage_options = storage_for(settings)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._strategy: MovingWindowRateLimiter | None = None
        self._last_storage_warning = 0.0

    def _limiter(self) -> MovingWindowRateLimiter:
        # An async storage belongs to the event loop that first used it (its Redis connections,
        # its expiry task); a server has one loop, a test harness may start several.
        loop = asyncio.get_running_loop()
        if self._strategy is None or self._loop is not loop:
            storage = storage_from_string(self.storage_uri, **self.storage_options)
            self._strategy = MovingWindowRateLimiter(storage)
            self._loop = loop
        return self._strategy

    async def check(
        self, kinds: tuple[str, ...], principal: Principal | None, request: Request
    ) -> None:
        """Count the request; raise TooManyRequests when one of its limits is spent."""
        keys = rate_limit_keys(principal, request)
        limiter = self._limiter()
        for kind in kinds:
            limits = self.limits[kind]
            items = limits.anonymous if principal is None else limits.authenticated
            for item in items:
                for key in keys:
                    try:
                        allowed = await limiter.hit(item, kind, key)
                        if allowed:
                            continue
                        stats = await limiter.get_window_stats(item, kind, key)
                    except Exception as exc:
                        # Fail open: an unreachable counter store must not stop the API (writes
                        # go on when the broker is down, too); say so, at most every 10 s.
                        self._storage_failed(exc)
                        return
                    retry_after = max(1, math.ceil(stats.reset_time - time.time()))
                    raise TooManyRequests(
                        f"Rate limit of {item} for {kind} reached; retry in {retry_after} s.",
                        headers={
                            "Retry-After": str(retry_after),
                            "RateLimit-Limit": str(item.amount),
                            "RateLimit-Remaining": "0",
                            "RateLimit-Reset": str(retry_after),
                        },
                    )

    def _storage_failed(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._last_storage_warning >= 10:
            self._last_storage_warning = now
            logger.warning("rate limits not applied: counter store failed: %r", exc)
        self._strategy = None  # reconnect on the next request


def storage_for(settings: Settings) -> tuple[str, dict[str, Any]]:
    """The `limits` storage URI and options: the explicit setting, the broker's Redis, or memory."""
    uri = settings.rate_limit_storage_url
    if uri is None:
        broker = settings.resolved_broker_url
        uri = broker if broker.startswith(("redis://", "rediss://")) else "memory://"
    if not uri.startswith("async+"):
        uri = "async+" + uri
    if uri.startswith(("async+redis", "async+rediss")):
        # redis-py is installed already (Celery's transport); short timeouts keep a dead Redis
        # from holding requests up.
        return uri, {
            "implementation": "redispy",
            "key_prefix": "licchavi:rate-limits",
            "socket_connect_timeout": 1.0,
            "socket_timeout": 1.0,
        }
    return uri, {}


def install_rate_limits(settings: Settings) -> RateLimits | None:
    return RateLimits(settings) if settings.rate_limit_enabled else None


async def _optional_principal(session: Any, authorization: str | None) -> Principal | None:
    if not authorization:
        return None
    principal = cached_principal(authorization)
    if principal is not None:
        return principal
    try:
        return await run_in_threadpool(authenticate, session, authorization)
    except NotAuthenticated:
        # Counted under the client address; the route answers the 401 itself.
        return None


async def enforce_rate_limits(request: Request, session: SessionDep) -> None:
    """App-wide dependency: count a limited route's request, answer 429 past its limit."""
    rate_limits: RateLimits | None = getattr(request.app.state, "rate_limits", None)
    route = request.scope.get("route")
    if rate_limits is None or route is None:
        return
    kinds = categories(request.method, getattr(route, "endpoint", None))
    if not kinds:
        return
    principal = await _optional_principal(session, request.headers.get("authorization"))
    await rate_limits.check(kinds, principal, request)
