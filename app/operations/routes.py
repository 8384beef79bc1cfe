"""Liveness (`/healthz`, no I/O) and readiness (`/readyz`: database and broker reachable; whether
sweeps can run)."""

from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from app.api.openapi import problems
from app.core.config import get_settings
from app.core.errors import problem_response
from app.operations.readiness import check_broker, check_database, check_sweeps

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def _within(seconds: float, name: str, check: Callable[[], str | None]) -> str | None:
    """`check`'s answer, or a timeout after `seconds`: a server that accepts connections but
    never answers must not hang the probe (its thread is left to the connection's own timeout)."""
    try:
        with anyio.fail_after(seconds):
            return await anyio.to_thread.run_sync(check, abandon_on_cancel=True)
    except TimeoutError:
        return f"{name}: no answer within {seconds:g} s"


@router.get("/readyz", response_model=None, responses=problems(503))
async def readyz(request: Request) -> Any:
    settings = get_settings()
    checks = {
        "database": await _within(settings.readiness_timeout_seconds, "database", check_database),
        "broker": await run_in_threadpool(check_broker, settings),
    }
    summary = {name: "error" if problem else "ok" for name, problem in checks.items()}
    # Sweeps are optional: without their extra the service serves everything else, so it stays
    # ready, and says that sweeps are not available (a submission gets the same reason, 503).
    sweeps_problem = check_sweeps()
    summary["sweeps"] = "unavailable" if sweeps_problem else "ok"
    if checks["database"]:
        return problem_response(
            request,
            status=503,
            slug="not-ready",
            detail="; ".join(problem for problem in checks.values() if problem),
            extra={"checks": summary},
        )
    # Without the broker the API still serves every read and write, and the runs queued
    # meanwhile start once it is back (run recovery re-sends their wake-ups): a load balancer
    # must not take every API host out during a broker outage, so it is ready, degraded.
    unavailable = {
        name: problem
        for name, problem in (("broker", checks["broker"]), ("sweeps", sweeps_problem))
        if problem
    }
    body: dict[str, Any] = {
        "status": "degraded" if checks["broker"] else "ready",
        "checks": summary,
    }
    if unavailable:
        body["unavailable"] = unavailable
    return JSONResponse(body)
