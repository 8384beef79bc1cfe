"""A budget stored before the API bounded it (a wall-clock limit of 1e14 s) still lets the
scheduler run the sweep to its end, on both backends."""

from sqlalchemy import text
from sqlmodel import Session

from app.core.config import get_settings
from app.core.db import get_engine
from app.sweeps import control
from tests.sweeps_support import grid_spec, run_sweep_inline


def test_an_unbounded_stored_wall_clock_limit_does_not_fail_the_sweep(
    committed_database: str,
) -> None:
    engine = get_engine()
    with Session(engine) as session:
        sweep = control.submit(session, control.validate_spec(grid_spec()))
        session.commit()
        sweep_id = sweep.id
    # Written straight to the table, as a PATCH could before the bound: 1e14 s after the start
    # is past the last date Python can represent.
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE sweeps SET wall_clock_seconds = 1e14 WHERE id = :id"), {"id": sweep_id}
        )
    assert run_sweep_inline(engine, get_settings(), sweep_id) == "completed"
    with engine.connect() as connection:
        error = connection.execute(
            text("SELECT error FROM sweeps WHERE id = :id"), {"id": sweep_id}
        ).scalar_one()
    assert error is None
