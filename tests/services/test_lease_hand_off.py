"""A run handed off by a stopping worker is claimable at once (not after its lease), by exactly
one claimant, and the worker that gave it up can no longer write to it."""

import pytest

from app.core.db import get_engine
from app.services import leases
from tests.services.test_run_publication import queued_run


def test_a_handed_off_run_is_claimed_at_once_and_only_once(committed_database: str) -> None:
    run_id = queued_run()
    engine = get_engine()
    first = leases.claim(engine, run_id=run_id, owner="stopping", lease_seconds=3600)
    assert first is not None
    # With an hour of lease left, nobody can take the run...
    assert leases.claim(engine, run_id=run_id, owner="early", lease_seconds=60) is None
    with engine.begin() as connection:
        assert leases.hand_off(connection, first)
    # ...until it is handed off: then one claim wins, with the next attempt.
    second = leases.claim(engine, run_id=run_id, owner="next", lease_seconds=60)
    assert second is not None and second.attempt == first.attempt + 1
    assert leases.claim(engine, run_id=run_id, owner="late", lease_seconds=60) is None
    with engine.begin() as connection:
        assert not leases.hand_off(connection, first)  # no longer ours: nothing written
        with pytest.raises(leases.LeaseLost):
            leases.renew(connection, first, lease_seconds=60, progress=0.5, epoch=5, criterion=None)
