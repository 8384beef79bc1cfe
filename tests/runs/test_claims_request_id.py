"""A claimed run or evaluation carries the request id stored with its row, for the worker to log
its work under (wake-up messages name no work, so the id travels on the row)."""

from sqlalchemy.engine import Engine
from sqlmodel import Session

from app.core.config import get_settings
from app.core.logs import bound
from app.runs import leases
from app.runs.service import new_run
from app.sweeps import execution
from ml.config import LicchaviConfig
from tests.sweeps.test_sweep_scheduler import engine, scheduler, submit  # noqa: F401
from tests.sweeps_support import grid_spec


def test_a_run_claim_carries_the_request_id_of_its_request(engine: Engine) -> None:  # noqa: F811
    with Session(engine) as session:
        with bound(request_id="run-request"):
            queued = new_run(
                criteria=None, config=LicchaviConfig(), trigger="manual", warm_start=False
            )
        unbound = new_run(
            criteria=None, config=LicchaviConfig(), trigger="manual", warm_start=False
        )
        session.add_all([queued, unbound])
        session.commit()
        ids = (queued.id, unbound.id)
    lease = get_settings().run_lease_seconds
    claims = [leases.claim(engine, run_id=i, owner="w", lease_seconds=lease) for i in ids]
    assert [claim.request_id for claim in claims if claim] == ["run-request", None]


def test_an_evaluation_claim_carries_the_request_id_of_its_sweep(engine: Engine) -> None:  # noqa: F811
    with bound(request_id="sweep-request"):
        submit(engine, grid_spec(parameters={"w": {"values": [2.0]}}, include_baseline=False))
    sched = scheduler(engine)
    sched.tick()  # prepare
    sched.tick()  # queue the trial's evaluations
    claim = execution.claim_next(engine, owner="w", lease_seconds=30)
    assert claim is not None and claim.request_id == "sweep-request"
