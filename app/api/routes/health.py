"""Liveness (`/healthz`, no I/O) and readiness (`/readyz`: database and broker reachable)."""

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from app.api.openapi import problems
from app.core.config import get_settings
from app.core.errors import problem_response
from app.services.readiness import check_broker, check_database

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
    if problems:
        return problem_response(
            request,
            status=503,
            slug="not-ready",
            detail="; ".join(problems),
            extra={"checks": summary},
        )
    return JSONResponse({"status": "ready", "checks": summary})
