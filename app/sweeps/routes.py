"""Sweeps: submit (or dry-run) a spec, steer it, and read trials, leaderboard, plots."""

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool

from app.api.auth_first import AuthFirstRoute
from app.api.deps import Id, PagingDep
from app.api.openapi import problems
from app.api.schemas import Page, Text
from app.core.db import SessionDep
from app.core.errors import (
    InvalidInput,
    PayloadTooLarge,
    ServiceUnavailable,
)
from app.core.json_body import JSON, media_type, unsupported_media_type
from app.identity.security import (
    Principal,
    require_scope,
    require_service_scope,
    require_started_by,
    scoped,
)
from app.models import Sweep
from app.sweeps import control, promotion, results
from app.sweeps.schemas import (
    PromotionCreate,
    RetryResult,
    SweepBudget,
    SweepBudgetUpdate,
    SweepProgress,
    SweepPublic,
    SweepStatus,
    TrainingDefaultsPublic,
    TrialPublic,
    TrialRerun,
)
from app.sweeps.study import missing_extra
from ml.sweep.spec import SpecError, SpecTooLarge, SweepSpec, read_document

router = APIRouter(prefix="/sweeps", tags=["sweeps"], route_class=AuthFirstRoute)
defaults_router = APIRouter(
    prefix="/training-defaults", tags=["sweeps"], route_class=AuthFirstRoute
)

YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")
WRITE = "sweeps:write"
Writer = Annotated[Principal, Depends(require_scope(WRITE))]


def _own_sweep(sweep_id: Id, session: SessionDep, principal: Writer) -> None:
    """The `sweeps:write` scope, and for a user's credential a sweep it submitted itself."""
    require_started_by(principal, control.get_sweep(session, sweep_id).caller, "sweeps")


# Steering a sweep without a body (pause, resume, cancel, retries); the routes with one (budget,
# re-runs) check after the body, so that bad input is a 422 whoever sends it.
Steers = Depends(_own_sweep)
# Promoting or reverting the production training defaults: service-wide.
ServiceWide = Depends(require_service_scope(WRITE))


def public(sweep: Sweep, progress: dict[str, Any] | None = None) -> SweepPublic:
    values = sweep.model_dump()
    values["budget"] = SweepBudget(
        max_trials=sweep.max_trials,
        max_parallel=sweep.max_parallel,
        wall_clock_seconds=sweep.wall_clock_seconds,
    )
    if progress is not None:
        values["progress"] = SweepProgress(**progress)
    return SweepPublic.model_validate(values)


@router.get("/schema")
def spec_schema() -> dict[str, Any]:
    """JSON Schema of a sweep spec (what `POST /sweeps` takes, in JSON or YAML)."""
    return SweepSpec.model_json_schema()


def _spec_content(body: bytes, media: str) -> Any:
    if media in YAML_TYPES:
        kind: Literal["json", "yaml"] = "yaml"
    elif media in (JSON, ""):
        kind = "json"
    else:
        raise unsupported_media_type(media, JSON, "application/yaml")
    try:
        return read_document(body, kind)
    except SpecTooLarge as exc:
        raise PayloadTooLarge(str(exc)) from exc
    except SpecError as exc:
        raise InvalidInput(
            f"Body is not valid {kind.upper()}: {exc}",
            errors=[{"loc": [], "pointer": "/", "message": str(exc), "type": "unreadable_body"}],
        ) from exc


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        200: {"description": "dry run: the trials and evaluations it would run"},
        **problems(415),
    },
    openapi_extra={
        "requestBody": {
            "content": {
                "application/json": {
                    "schema": {"type": "object", "description": "see GET /sweeps/schema"}
                },
                "application/yaml": {"schema": {"type": "string"}},
            },
            "required": True,
        }
    },
)
async def submit_sweep(
    request: Request,
    session: SessionDep,
    response: Response,
    principal: Writer,
    dry_run: Annotated[bool, Query(description="validate and expand; run nothing")] = False,
) -> Any:
    """Submit a sweep spec (JSON or YAML, at most 1 MiB); with `?dry_run=true`, see what it
    would run. 503 when this installation cannot run sweeps (the `sweeps` extra is missing)."""
    missing = missing_extra()
    if missing is not None:
        raise ServiceUnavailable(missing)
    content = _spec_content(await request.body(), media_type(request.headers.get("content-type")))
    defaults = await run_in_threadpool(control.production_settings, session)
    spec = await run_in_threadpool(control.validate_spec, content, defaults=defaults)
    if dry_run:
        response.status_code = status.HTTP_200_OK
        return await run_in_threadpool(control.dry_run, session, spec)
    sweep = await run_in_threadpool(control.submit, session, spec, principal.credential)
    response.headers["Location"] = str(request.url_for("get_sweep", sweep_id=sweep.id).path)
    return public(sweep)


@router.get("", response_model=Page[SweepPublic])
def list_sweeps(
    session: SessionDep,
    paging: PagingDep,
    status: Annotated[SweepStatus | None, Query()] = None,
    tag: Annotated[Text | None, Query(max_length=64)] = None,
) -> Page[SweepPublic]:
    """Sweeps, newest first."""
    sweeps, total = control.list_sweeps(
        session, status=status, tag=tag, limit=paging.limit, offset=paging.offset
    )
    return Page(
        items=[public(sweep) for sweep in sweeps],
        total=total,
        limit=paging.limit,
        offset=paging.offset,
    )


@router.get("/{sweep_id}", response_model=SweepPublic)
def get_sweep(sweep_id: Id, session: SessionDep) -> SweepPublic:
    """The sweep, its resolved spec, and its progress (trials and evaluations by status)."""
    sweep = control.get_sweep(session, sweep_id)
    return public(sweep, control.progress(session, sweep_id))


@router.patch(
    "/{sweep_id}",
    response_model=SweepPublic,
    dependencies=[scoped(WRITE)],  # the key, before the body is read
    responses=problems(409),
)
def update_budget(
    sweep_id: Id, payload: SweepBudgetUpdate, session: SessionDep, principal: Writer
) -> SweepPublic:
    """Extend or shrink the budget."""
    _own_sweep(sweep_id, session, principal)  # after the body's checks: bad input is a 422
    sweep = control.update_budget(
        session,
        sweep_id,
        max_trials=payload.max_trials,
        max_parallel=payload.max_parallel,
        wall_clock_seconds=payload.wall_clock_seconds,
    )
    return public(sweep)


@router.post(
    "/{sweep_id}/pause",
    response_model=SweepPublic,
    dependencies=[Steers],
    responses=problems(409),
)
def pause_sweep(sweep_id: Id, session: SessionDep) -> SweepPublic:
    """Start nothing new; running evaluations finish and are kept."""
    return public(control.pause(session, sweep_id))


@router.post(
    "/{sweep_id}/resume",
    response_model=SweepPublic,
    dependencies=[Steers],
    responses=problems(409),
)
def resume_sweep(sweep_id: Id, session: SessionDep) -> SweepPublic:
    return public(control.resume(session, sweep_id))


@router.post(
    "/{sweep_id}/cancel",
    response_model=SweepPublic,
    dependencies=[Steers],
    responses=problems(409),
)
def cancel_sweep(sweep_id: Id, session: SessionDep) -> SweepPublic:
    """Cancel: nothing new starts, running evaluations stop at their next heartbeat."""
    return public(control.cancel(session, sweep_id))


@router.post(
    "/{sweep_id}/retry-failed",
    response_model=RetryResult,
    dependencies=[Steers],
    responses=problems(409),
)
def retry_failed(sweep_id: Id, session: SessionDep) -> RetryResult:
    """Run the failed trials' failed evaluations again."""
    return RetryResult(retried_evaluations=control.retry_failed(session, sweep_id))


@router.get("/{sweep_id}/trials", response_model=Page[TrialPublic])
def list_trials(
    sweep_id: Id,
    session: SessionDep,
    paging: PagingDep,
    filter: Annotated[
        Text | None,
        Query(
            max_length=2000,
            description="e.g. `params.w >= 0.5 AND (metrics.heldout_accuracy > 0.7 OR tag IN"
            " (fast, baseline)) AND status = succeeded`",
        ),
    ] = None,
    sort: Annotated[
        Text | None, Query(max_length=500, description="e.g. `-objective,params.w`")
    ] = None,
) -> Page[TrialPublic]:
    """Trials filtered (AND/OR/NOT, IN, BETWEEN over params., metrics., tag, status,
    source, objective) and sorted in the database."""
    items, total = results.list_trials(
        session,
        sweep_id,
        filter_text=filter,
        sort_text=sort,
        limit=paging.limit,
        offset=paging.offset,
    )
    return Page(
        items=[TrialPublic.model_validate(item) for item in items],
        total=total,
        limit=paging.limit,
        offset=paging.offset,
    )


@router.get("/{sweep_id}/trials.csv", response_class=Response)
def export_trials(sweep_id: Id, session: SessionDep) -> Response:
    """Every trial with its parameters and mean metrics, as CSV."""
    return Response(
        content=results.export_csv(session, sweep_id),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="sweep-{sweep_id}-trials.csv"'},
    )


@router.get("/{sweep_id}/trials/{trial_id}")
def get_trial(sweep_id: Id, trial_id: Id, session: SessionDep) -> dict[str, Any]:
    """A trial with its resolved settings, every evaluation (metrics, per-epoch history, log,
    fingerprints, versions) and its status history."""
    return results.trial_detail(session, sweep_id, trial_id)


@router.post(
    "/{sweep_id}/trials/{trial_id}/rerun",
    response_model=TrialPublic,
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[scoped(WRITE)],  # the key, before the body is read
    responses=problems(409),
)
def rerun_trial(
    sweep_id: Id, trial_id: Id, payload: TrialRerun, session: SessionDep, principal: Writer
) -> TrialPublic:
    _own_sweep(sweep_id, session, principal)  # after the body's checks: bad input is a 422
    trial = control.rerun_trial(session, sweep_id, trial_id, overrides=payload.overrides)
    values = trial.model_dump()
    values["tags"] = [tag for tag in values.pop("tags_text").split(",") if tag]
    return TrialPublic.model_validate(values)


@router.get("/{sweep_id}/leaderboard")
def leaderboard(
    sweep_id: Id,
    session: SessionDep,
    paging: PagingDep,
    metric: Annotated[Text | None, Query(max_length=64)] = None,
    direction: Annotated[str | None, Query(pattern="^(maximize|minimize)$")] = None,
    confidence: Annotated[float, Query(gt=0.5, lt=1)] = 0.95,
) -> dict[str, Any]:
    """Configurations ranked by the pessimistic end of the bootstrap interval of their mean
    over seeds and folds, with a paired Wilcoxon test against the incumbent (base settings)."""
    return results.leaderboard(
        session,
        sweep_id,
        metric=metric,
        direction=direction,
        confidence=confidence,
        limit=paging.limit,
        offset=paging.offset,
    )


@router.get("/{sweep_id}/compare")
def compare(
    sweep_id: Id,
    session: SessionDep,
    trials: Annotated[str, Query(pattern=r"^\d+(,\d+)+$", description="trial ids: 3,7,9")],
) -> dict[str, Any]:
    """Only the settings that differ between the trials, with their metrics side by side."""
    return results.compare(session, sweep_id, [int(part) for part in trials.split(",")])


@router.get("/{sweep_id}/events")
def sweep_events(sweep_id: Id, session: SessionDep, paging: PagingDep) -> dict[str, Any]:
    """Status history of the sweep, its trials and evaluations, oldest first."""
    items, total = results.events(session, sweep_id, limit=paging.limit, offset=paging.offset)
    return {"items": items, "total": total, "limit": paging.limit, "offset": paging.offset}


@router.get("/{sweep_id}/plots/{name}.json")
def plot_data(
    sweep_id: Id,
    name: str,
    session: SessionDep,
    metric: Annotated[Text | None, Query(max_length=64)] = None,
    x: Annotated[Text | None, Query(max_length=64)] = None,
    series: Annotated[Text | None, Query(max_length=64)] = None,
) -> dict[str, Any]:
    """The numbers of a plot: loss-curves, metric-vs-parameter (?metric=&x=&series=),
    parallel-coordinates, importances."""
    return results.plot_data(session, sweep_id, name, metric=metric, x=x, series=series)


@router.get("/{sweep_id}/plots/{name}.png", response_class=Response)
def plot_png(
    sweep_id: Id,
    name: str,
    session: SessionDep,
    metric: Annotated[Text | None, Query(max_length=64)] = None,
    x: Annotated[Text | None, Query(max_length=64)] = None,
    series: Annotated[Text | None, Query(max_length=64)] = None,
) -> Response:
    """The same plot drawn as PNG."""
    data = results.plot_data(session, sweep_id, name, metric=metric, x=x, series=series)
    return Response(content=results.plot_png(name, data), media_type="image/png")


@router.post(
    "/{sweep_id}/promote",
    response_model=TrainingDefaultsPublic,
    status_code=status.HTTP_201_CREATED,
    dependencies=[ServiceWide],
    responses=problems(409),
)
def promote(sweep_id: Id, payload: PromotionCreate, session: SessionDep) -> TrainingDefaultsPublic:
    """Make a trial's settings (default: the best) the defaults of production training runs."""
    row = promotion.promote(session, sweep_id, trial_id=payload.trial_id, note=payload.note)
    return TrainingDefaultsPublic.model_validate(promotion.public(row, row.id))


@defaults_router.get("", response_model=Page[TrainingDefaultsPublic])
def list_training_defaults(session: SessionDep, paging: PagingDep) -> Page[TrainingDefaultsPublic]:
    """Every promotion, newest first; `active` marks the one in force."""
    rows, total = promotion.history(session, limit=paging.limit, offset=paging.offset)
    active = promotion.active_defaults(session)
    active_id = active.id if active is not None else None
    return Page(
        items=[TrainingDefaultsPublic.model_validate(promotion.public(r, active_id)) for r in rows],
        total=total,
        limit=paging.limit,
        offset=paging.offset,
    )


@defaults_router.post(
    "/{defaults_id}/revert",
    response_model=TrainingDefaultsPublic,
    dependencies=[ServiceWide],
    responses=problems(409),
)
def revert_training_defaults(defaults_id: Id, session: SessionDep) -> TrainingDefaultsPublic:
    """Withdraw a promotion: the one before it (or the library defaults) applies again."""
    row = promotion.revert(session, defaults_id)
    active = promotion.active_defaults(session)
    return TrainingDefaultsPublic.model_validate(
        promotion.public(row, active.id if active is not None else None)
    )
