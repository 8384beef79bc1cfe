"""Liveness (`/healthz`, no I/O) and readiness (`/readyz`: database and broker reachable; whether
sweeps can run)."""

from typing import Any

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


@router.get("/readyz", response_model=None, responses=problems(503))
async def readyz(request: Request) -> Any:
    settings = get_settings()
    checks = {
        "database": await run_in_threadpool(check_database),
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
