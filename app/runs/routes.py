"""Training runs: start (idempotently), list, read, cancel, metrics and plots."""

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request, Response, status

from app.api.auth_first import AuthFirstRoute
from app.api.deps import Id, PagingDep
from app.api.openapi import problems
from app.api.schemas import CriterionName, Page, Text
from app.core.db import SessionDep
from app.identity.security import Principal, require_scope, require_started_by, scoped
from app.runs import plots, service
from app.runs.schemas import RunCreate, RunMetrics, RunPublic, RunStatus, RunTrigger

router = APIRouter(prefix="/training-runs", tags=["training runs"], route_class=AuthFirstRoute)

IdempotencyKey = Annotated[
    Text | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        description="A retry with the same key and body, from the same credential, returns the"
        " run the first call created; the key is the credential's own (another credential's"
        " same key is another request).",
    ),
]
WRITE = "runs:write"


@router.post(
    "",
    response_model=RunPublic,
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[scoped(WRITE)],
    responses=problems(409),
)
def create_run(
    payload: RunCreate,
    session: SessionDep,
    request: Request,
    response: Response,
    principal: Annotated[Principal, Depends(require_scope(WRITE))],
    idempotency_key: IdempotencyKey = None,
) -> RunPublic:
    """Queue a training run; a worker picks it up. Poll the `Location` for progress."""
    run, created = service.create_run(
        session,
        payload=payload,
        caller=principal.credential,
        idempotency_key=idempotency_key,
    )
    response.headers["Location"] = str(request.url_for("get_run", run_id=run.id).path)
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return service.public(run)


@router.get("", response_model=Page[RunPublic])
def list_runs(
    session: SessionDep,
    paging: PagingDep,
    status: Annotated[RunStatus | None, Query()] = None,
    trigger: Annotated[RunTrigger | None, Query()] = None,
    criterion: Annotated[CriterionName | None, Query()] = None,
) -> Page[RunPublic]:
    """Runs, newest first."""
    runs, total = service.list_runs(
        session,
        status=status,
        trigger=trigger,
        criterion=criterion,
        limit=paging.limit,
        offset=paging.offset,
    )
    progress = service.criteria_progress(session, [run.id for run in runs if run.id is not None])
    return Page(
        items=[service.public(run, criteria=progress.get(run.id or 0)) for run in runs],
        total=total,
        limit=paging.limit,
        offset=paging.offset,
    )


@router.get("/{run_id}", response_model=RunPublic)
def get_run(run_id: Id, session: SessionDep) -> RunPublic:
    """Status, progress, estimated time left, latest loss terms, error."""
    run = service.get_run(session, run_id)
    assert run.id is not None
    return service.public(
        run,
        metrics=service.metric_summary(session, run.id),
        criteria=service.criteria_progress(session, [run.id])[run.id],
    )


@router.post("/{run_id}/cancel", response_model=RunPublic, responses=problems(409))
def cancel_run(
    run_id: Id,
    session: SessionDep,
    principal: Annotated[Principal, Depends(require_scope(WRITE))],
) -> RunPublic:
    """Cancel a queued run now, or ask a running one to stop after its current epoch. A user's
    credential cancels only the runs it started."""
    require_started_by(principal, service.get_run(session, run_id).caller, "runs")
    return service.public(service.cancel_run(session, run_id))


@router.get("/{run_id}/metrics", response_model=RunMetrics)
def get_metrics(run_id: Id, session: SessionDep) -> RunMetrics:
    """Every loss term of every epoch written so far."""
    return service.metric_history(session, run_id)


@router.get("/{run_id}/plots/loss.png", response_class=Response)
def loss_plot(run_id: Id, session: SessionDep) -> Response:
    """Loss terms (fit, s, gen, reg) per epoch, one panel per criterion."""
    return Response(content=plots.loss_plot(session, run_id), media_type="image/png")


@router.get("/{run_id}/plots/scores.png", response_class=Response)
def scores_plot(run_id: Id, session: SessionDep) -> Response:
    """Histogram of the run's global scores, one panel per criterion."""
    return Response(content=plots.scores_plot(session, run_id), media_type="image/png")
