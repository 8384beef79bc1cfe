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
    problems = [problem for problem in checks.values() if problem]
    # Sweeps are optional: without their extra the service serves everything else, so it stays
    # ready, and says that sweeps are not available (a submission gets the same reason, 503).
    sweeps_problem = check_sweeps()
    summary["sweeps"] = "unavailable" if sweeps_problem else "ok"
    if problems:
        return problem_response(
            request,
            status=503,
            slug="not-ready",
            detail="; ".join(problems),
            extra={"checks": summary},
        )
    body: dict[str, Any] = {"status": "ready", "checks": summary}
    if sweeps_problem:
        body["unavailable"] = {"sweeps": sweeps_problem}
    return JSONResponse(body)
