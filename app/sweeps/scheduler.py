"""The sweep scheduler: freezes data, asks Optuna for trials, hands evaluations to workers,
aggregates finished trials and tells Optuna each result exactly once.

One scheduler runs at a time, whoever holds the `scheduler_leases` row; it lives in a worker's
main process, so a crashed worker's scheduling is taken over by another. Every step is a short
transaction on our tables, which are the truth; Optuna's storage only mirrors trial outcomes.

The lease is fenced: each write transaction starts by renewing the lease row on the condition
that it still carries this scheduler's owner and epoch, so a holder that was paused or slow past
its lease, and was taken over meanwhile, has its writes refused and abandons its pass.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import and_, case, func, insert, or_, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from app.core.config import Settings
from app.core.errors import public_error
from app.models import Criterion as CriterionModel
from app.models import (
    SchedulerLease,
    Sweep,
    SweepDataset,
    SweepEvaluation,
    SweepTrial,
)
from app.runs.snapshot import ComparisonSnapshot, load_snapshot
from app.sweeps.execution import record_event
from app.sweeps.study import distributions, load_study, open_storage, study_name
from ml.config import LicchaviConfig, config_hash
from ml.sweep.datasets import FrozenDataset, freeze_holdout, freeze_synthetic
from ml.sweep.spec import MAX_WALL_CLOCK_SECONDS, HoldoutEvaluation, SweepSpec

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger(__name__)

SweepTable = Sweep.__table__  # type: ignore[attr-defined]
Trial = SweepTrial.__table__  # type: ignore[attr-defined]
Evaluation = SweepEvaluation.__table__  # type: ignore[attr-defined]
Dataset = SweepDataset.__table__  # type: ignore[attr-defined]
Lease = SchedulerLease.__table__  # type: ignore[attr-defined]
Criterion = CriterionModel.__table__  # type: ignore[attr-defined]

LEASE_NAME = "sweeps"
ACTIVE_TRIAL = ("pending", "running")
LIVE_EVALUATION = ("pending", "queued", "running")
MAX_CONSECUTIVE_FAILURES = 20


def now_utc() -> datetime:
    return datetime.now(UTC)


def as_aware(moment: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes for timezone-aware columns; they are UTC.
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


class LeaseLost(Exception):
    """Another scheduler took the lease over: this one's writes are refused, its pass ends."""


def acquire_lease(engine: Engine, *, owner: str, seconds: float) -> int | None:
    """Take or renew the scheduler lease; returns its epoch (the fencing token), or None while
    another process holds a fresh one. Taking it from another owner moves the epoch on."""
    now = now_utc()
    expires = now + timedelta(seconds=seconds)
    with engine.begin() as connection:
        epoch = connection.execute(
            update(Lease)
            .where(
                Lease.c.name == LEASE_NAME, or_(Lease.c.owner == owner, Lease.c.expires_at < now)
            )
            # (SET expressions read the row as it was: the old owner.)
            .values(
                owner=owner,
                expires_at=expires,
                epoch=case((Lease.c.owner == owner, Lease.c.epoch), else_=Lease.c.epoch + 1),
            )
            .returning(Lease.c.epoch)
        ).scalar()
    if epoch is not None:
        return int(epoch)
    try:
        with engine.begin() as connection:
            connection.execute(
                insert(Lease).values(name=LEASE_NAME, owner=owner, expires_at=expires, epoch=1)
            )
    except IntegrityError:
        return None
    return 1


def hold_lease(connection: Connection, *, owner: str, epoch: int, seconds: float) -> None:
    """The fence, first statement of every scheduler write transaction: renew the lease if it
    still carries our owner and epoch, else raise LeaseLost (the transaction rolls back).

    The renewed row stays locked until the transaction ends (on SQLite the whole database is),
    so no other scheduler can take the lease over while these writes, Optuna's included, are
    made; one that took it before makes this UPDATE match nothing.
    """
    held = connection.execute(
        update(Lease)
        .where(Lease.c.name == LEASE_NAME, Lease.c.owner == owner, Lease.c.epoch == epoch)
        .values(expires_at=now_utc() + timedelta(seconds=seconds))
    ).rowcount
    if not held:
        raise LeaseLost(f"scheduler lease epoch {epoch} of {owner} was taken over")


def release_lease(engine: Engine, *, owner: str) -> None:
    with engine.begin() as connection:
        connection.execute(
            update(Lease)
            .where(Lease.c.name == LEASE_NAME, Lease.c.owner == owner)
            .values(expires_at=now_utc() - timedelta(seconds=1))
        )


def trial_config(spec: SweepSpec, params: dict[str, Any]) -> LicchaviConfig:
    """A trial's settings (with the base seed; each evaluation sets its own)."""
    return LicchaviConfig.model_validate({**spec.base, **params})


class SweepScheduler:
    """One scheduling pass over every live sweep per `tick()`; caches studies between passes."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        *,
        owner: str,
        wake: Callable[[int], object],
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.owner = owner
        self.wake = wake
        self._storage: optuna.storages.BaseStorage | None = None
        self._studies: dict[int, optuna.Study] = {}
        self._specs: dict[int, SweepSpec] = {}
        self._failures: dict[int, int] = {}
        self.epoch: int | None = None  # of the lease, while we hold it

    # -- the lease --------------------------------------------------------------------------
    @contextmanager
    def fenced(self) -> Iterator[Connection]:
        """A write transaction that holds only while our lease epoch is the current one."""
        if self.epoch is None:
            raise LeaseLost(f"{self.owner} does not hold the scheduler lease")
        with self.engine.begin() as connection:
            hold_lease(
                connection,
                owner=self.owner,
                epoch=self.epoch,
                seconds=self.settings.sweep_scheduler_lease_seconds,
            )
            yield connection

    @contextmanager
    def lease_kept(self) -> Iterator[None]:
        """Renew the lease in the background during long work done outside a transaction (the
        freezing of a big dataset), so that work does not outlast the lease. A paused process
        renews nothing: its lease lapses, and its later writes are refused by the fence."""
        done = threading.Event()
        every = self.settings.sweep_scheduler_lease_seconds / 3

        def renew() -> None:
            while not done.wait(every):
                try:
                    with self.fenced():
                        pass
                except LeaseLost:
                    return  # the writes that follow will be refused as well
                except Exception:
                    # A lapse here only shortens the lease; the next write's fence decides.
                    logger.warning("sweep scheduler: lease renewal failed", exc_info=True)

        renewer = threading.Thread(target=renew, name="sweep-lease-renewal", daemon=True)
        renewer.start()
        try:
            yield
        finally:
            done.set()
            renewer.join()

    # -- the pass ---------------------------------------------------------------------------
    def tick(self) -> bool:
        """One pass if we hold the scheduler lease; returns whether we did (False too when the
        lease was taken over during the pass: its remaining writes were refused)."""
        try:
            return self._tick()
        except LeaseLost as lost:
            logger.warning("sweep scheduler: %s; pass abandoned", lost)
            self.epoch = None
            self._studies.clear()
            return False

    def _tick(self) -> bool:
        epoch = acquire_lease(
            self.engine, owner=self.owner, seconds=self.settings.sweep_scheduler_lease_seconds
        )
        if epoch != self.epoch:
            self._studies.clear()  # another scheduler may have changed them meanwhile
        self.epoch = epoch
        if epoch is None:
            return False
        to_wake = self.reap_expired()
        with self.engine.connect() as connection:
            sweeps = connection.execute(
                select(SweepTable.c.id, SweepTable.c.status)
                .where(
                    or_(
                        SweepTable.c.status.in_(("preparing", "running", "paused")),
                        and_(
                            SweepTable.c.status == "cancelled", SweepTable.c.finished_at.is_(None)
                        ),
                    )
                )
                .order_by(SweepTable.c.id)
            ).all()
        for sweep_id, status in sweeps:
            try:
                if status == "preparing":
                    self.prepare(sweep_id)
                elif status == "cancelled":
                    self.wind_down(sweep_id)
                else:
                    to_wake += self.step(sweep_id, paused=status == "paused")
            except LeaseLost:
                raise
            except Exception as exc:
                logger.exception("sweep %s: scheduling failed", sweep_id)
                failures = self._failures.get(sweep_id, 0) + 1
                self._failures[sweep_id] = failures
                # A transient error (the database restarting) is retried by the next pass; one
                # that keeps coming back would keep the sweep running forever, so it fails it.
                if status == "preparing" or failures >= MAX_CONSECUTIVE_FAILURES:
                    self._fail(sweep_id, public_error(exc))
                    self._failures.pop(sweep_id, None)
            else:
                self._failures.pop(sweep_id, None)
        to_wake += self.resend_unclaimed()
        for evaluation_id in to_wake:
            self.wake(evaluation_id)
        return True

    def spec(self, sweep_id: int, connection: Connection) -> SweepSpec:
        if sweep_id not in self._specs:
            stored = connection.execute(
                select(SweepTable.c.spec).where(SweepTable.c.id == sweep_id)
            ).scalar_one()
            self._specs[sweep_id] = SweepSpec.model_validate(stored)
        return self._specs[sweep_id]

    # -- preparation ------------------------------------------------------------------------
    def prepare(self, sweep_id: int) -> None:
        """Freeze the evaluation data (and its split), create the study and the baseline.

        The data is read in a short transaction and frozen outside any, with the lease renewed
        meanwhile; everything is then written in one fenced transaction that first moves the
        sweep out of `preparing`, so a second preparation (after a take-over) writes nothing.
        """
        with self.engine.connect() as connection:
            spec = self.spec(sweep_id, connection)
            live = self._live_comparisons(connection, spec)
        with self.lease_kept():
            datasets = [
                (seed, frozen, frozen.to_bytes()) for seed, frozen in self._freeze(spec, live)
            ]
            # Opening Optuna's storage (creating its tables the first time) is slow and writes
            # no result: done before the fenced transaction, which it would otherwise lengthen.
            storage = self.storage
        with self.fenced() as connection:
            started = connection.execute(
                update(SweepTable)
                .where(SweepTable.c.id == sweep_id, SweepTable.c.status == "preparing")
                .values(status="running", started_at=now_utc())
            ).rowcount
            if not started:
                logger.info("sweep %s: no longer preparing; frozen data dropped", sweep_id)
                return
            fingerprints, split_fingerprints = [], []
            for seed, frozen, payload in datasets:
                connection.execute(
                    insert(Dataset).values(
                        sweep_id=sweep_id,
                        seed=seed,
                        payload=payload,
                        fingerprint=frozen.fingerprint,
                        split_fingerprint=frozen.split_fingerprint,
                        n_comparisons=frozen.comparisons.n_comparisons,
                        created_at=now_utc(),
                    )
                )
                fingerprints.append(frozen.fingerprint)
                split_fingerprints.append(frozen.split_fingerprint)
            spec_hash, max_trials = connection.execute(
                select(SweepTable.c.spec_hash, SweepTable.c.max_trials).where(
                    SweepTable.c.id == sweep_id
                )
            ).one()
            name = study_name(sweep_id, spec_hash)
            load_study(storage, name, spec)
            connection.execute(
                update(SweepTable)
                .where(SweepTable.c.id == sweep_id)
                .values(
                    study_name=name,
                    data_fingerprint=_combined(fingerprints),
                    split_fingerprint=_combined(split_fingerprints),
                )
            )
            if spec.needs_baseline(max_trials):
                self._create_trial(
                    connection, sweep_id, spec, spec.base_params(), source="baseline"
                )
            record_event(connection, sweep_id=sweep_id, status="running", detail="data frozen")
        logger.info("sweep %s: prepared (%d dataset(s))", sweep_id, len(datasets))

    def _live_comparisons(
        self, connection: Connection, spec: SweepSpec
    ) -> ComparisonSnapshot | None:
        """A holdout sweep's input: the criterion's live comparisons and the trusted users
        (None for synthetic data)."""
        if not isinstance(spec.evaluation, HoldoutEvaluation):
            return None
        known = connection.execute(
            select(func.count()).select_from(Criterion).where(Criterion.c.name == spec.criterion)
        ).scalar_one()
        if not known:
            raise ValueError(f"unknown criterion {spec.criterion!r}")
        return load_snapshot(connection, criteria=[spec.criterion])

    def _freeze(
        self, spec: SweepSpec, live: ComparisonSnapshot | None
    ) -> list[tuple[int | None, FrozenDataset]]:
        evaluation = spec.evaluation
        if isinstance(evaluation, HoldoutEvaluation):
            assert live is not None
            frozen = freeze_holdout(
                live.frame,
                criterion=spec.criterion,
                folds=evaluation.folds,
                split_by=evaluation.split_by,
                seed=evaluation.split_seed,
                trusted=live.trusted,
            )
            return [(None, frozen)]
        return [
            (
                seed,
                freeze_synthetic(
                    evaluation.generator,
                    seed=seed,
                    criterion=spec.criterion,
                    heldout_fraction=evaluation.heldout_fraction,
                ),
            )
            for seed in spec.repeats.seeds
        ]

    def _fail(self, sweep_id: int, error: str) -> None:
        with self.fenced() as connection:
            connection.execute(
                update(SweepTable)
                .where(SweepTable.c.id == sweep_id)
                .values(status="failed", error=error[:10_000], finished_at=now_utc())
            )
            self._cancel_unstarted(connection, sweep_id, "sweep failed")
            connection.execute(
                update(Evaluation)
                .where(Evaluation.c.sweep_id == sweep_id, Evaluation.c.status == "running")
                .values(cancel_requested=True)
            )
            record_event(connection, sweep_id=sweep_id, status="failed", detail=error)

    @property
    def storage(self) -> optuna.storages.BaseStorage:
        if self._storage is None:
            self._storage = open_storage(self.settings)
        return self._storage

    def study(self, sweep_id: int, connection: Connection) -> optuna.Study:
        if sweep_id not in self._studies:
            name = connection.execute(
                select(SweepTable.c.study_name).where(SweepTable.c.id == sweep_id)
            ).scalar_one()
            study = load_study(self.storage, name, self.spec(sweep_id, connection))
            self._fail_orphans(connection, sweep_id, study)
            self._studies[sweep_id] = study
        return self._studies[sweep_id]

    def _fail_orphans(self, connection: Connection, sweep_id: int, study: optuna.Study) -> None:
        """Optuna trials asked by a scheduler that died before recording them: told FAIL."""
        from optuna.trial import TrialState

        known = set(
            connection.execute(
                select(Trial.c.optuna_trial_id).where(
                    Trial.c.sweep_id == sweep_id, Trial.c.optuna_trial_id.is_not(None)
                )
            ).scalars()
        )
        for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if frozen._trial_id not in known:
                study.tell(frozen.number, state=TrialState.FAIL)

    # -- trials -----------------------------------------------------------------------------
    def _create_trial(
        self,
        connection: Connection,
        sweep_id: int,
        spec: SweepSpec,
        params: dict[str, Any],
        *,
        source: str,
        optuna_trial_id: int | None = None,
    ) -> int | None:
        """Insert a trial and its evaluations (pending); None if its settings are invalid."""
        number = connection.execute(
            select(func.coalesce(func.max(Trial.c.number) + 1, 0)).where(
                Trial.c.sweep_id == sweep_id
            )
        ).scalar_one()
        tags = spec.tags + ([source] if source in ("baseline",) else [])
        try:
            config = trial_config(spec, params)
        except ValueError as exc:
            trial_id = connection.execute(
                insert(Trial)
                .values(
                    sweep_id=sweep_id,
                    number=number,
                    status="failed",
                    source=source,
                    params=params,
                    config={**spec.base, **params},
                    config_hash="",
                    optuna_trial_id=optuna_trial_id,
                    metrics={},
                    tags_text=_tags_text(tags),
                    created_at=now_utc(),
                    finished_at=now_utc(),
                )
                .returning(Trial.c.id)
            ).scalar_one()
            record_event(
                connection, sweep_id=sweep_id, trial_id=trial_id, status="failed", detail=str(exc)
            )
            return None
        trial_id = connection.execute(
            insert(Trial)
            .values(
                sweep_id=sweep_id,
                number=number,
                status="pending",
                source=source,
                params=params,
                config=config.model_dump(mode="json"),
                config_hash=config_hash(config),
                optuna_trial_id=optuna_trial_id,
                metrics={},
                tags_text=_tags_text(tags),
                created_at=now_utc(),
            )
            .returning(Trial.c.id)
        ).scalar_one()
        add_evaluations(connection, sweep_id, int(trial_id), spec)
        return int(trial_id)

    def _ask(self, connection: Connection, sweep_id: int, spec: SweepSpec) -> bool:
        """Create the next trial of the search; False when the search space is exhausted."""
        from optuna.trial import TrialState

        study = self.study(sweep_id, connection)
        if spec.method == "grid":
            asked = connection.execute(
                select(func.count())
                .select_from(Trial)
                .where(Trial.c.sweep_id == sweep_id, Trial.c.source == "grid")
            ).scalar_one()
            # One point per ask, not the whole grid (up to 100,000 points) each time.
            if asked >= spec.grid_size():
                return False
            study.enqueue_trial(spec.grid_point(asked))
            source = "grid"
        else:
            source = "sampler"
        trial = study.ask(distributions(spec))
        trial_id = self._create_trial(
            connection,
            sweep_id,
            spec,
            dict(trial.params),
            source=source,
            optuna_trial_id=trial._trial_id,
        )
        if trial_id is None:
            study.tell(trial, state=TrialState.FAIL)
            connection.execute(
                update(Trial)
                .where(Trial.c.optuna_trial_id == trial._trial_id, Trial.c.sweep_id == sweep_id)
                .values(told_at=now_utc())
            )
        return True

    # -- one live sweep ---------------------------------------------------------------------
    def step(self, sweep_id: int, *, paused: bool) -> list[int]:
        """Aggregate, tell, prune, ask, release; returns evaluations to wake a worker for."""
        with self.fenced() as connection:
            spec = self.spec(sweep_id, connection)
            if paused:
                self._unrelease(connection, sweep_id)
            self._settle_trials(connection, sweep_id, spec)
            sweep = connection.execute(select(SweepTable).where(SweepTable.c.id == sweep_id)).one()
            if paused:
                return []
            past_deadline = self._past_deadline(sweep)
            if past_deadline:
                self._cancel_unstarted(connection, sweep_id, "wall-clock limit reached")
                self._settle_trials(connection, sweep_id, spec)
            exhausted = past_deadline
            while not exhausted:
                counts = self._trial_counts(connection, sweep_id)
                if counts["active"] >= sweep.max_parallel:
                    break
                if counts["search"] >= sweep.max_trials:
                    exhausted = True
                    break
                exhausted = not self._ask(connection, sweep_id, spec)
            released = self._release(connection, sweep_id, sweep.max_parallel)
            if exhausted and self._finished(connection, sweep_id):
                connection.execute(
                    update(SweepTable)
                    .where(SweepTable.c.id == sweep_id, SweepTable.c.status == "running")
                    .values(status="completed", finished_at=now_utc())
                )
                record_event(connection, sweep_id=sweep_id, status="completed")
                self._studies.pop(sweep_id, None)
                logger.info("sweep %s: completed", sweep_id)
        return released

    def _past_deadline(self, sweep: Any) -> bool:
        if sweep.wall_clock_seconds is None or sweep.started_at is None:
            return False
        started = as_aware(sweep.started_at)
        assert started is not None
        # Bounded as the API now bounds it: a budget stored before that (1e14 s) would overflow
        # the date and fail the sweep on every pass.
        seconds = min(float(sweep.wall_clock_seconds), MAX_WALL_CLOCK_SECONDS)
        return now_utc() >= started + timedelta(seconds=seconds)

    def _trial_counts(self, connection: Connection, sweep_id: int) -> dict[str, int]:
        active = func.count().filter(Trial.c.status.in_(ACTIVE_TRIAL))
        search = func.count().filter(Trial.c.source.in_(("grid", "sampler")))
        row = connection.execute(select(active, search).where(Trial.c.sweep_id == sweep_id)).one()
        return {"active": int(row[0]), "search": int(row[1])}

    def _finished(self, connection: Connection, sweep_id: int) -> bool:
        live = connection.execute(
            select(func.count())
            .select_from(Trial)
            .where(Trial.c.sweep_id == sweep_id, Trial.c.status.in_(ACTIVE_TRIAL))
        ).scalar_one()
        return live == 0

    def _unrelease(self, connection: Connection, sweep_id: int) -> None:
        """Pause: evaluations handed out but not started go back to pending."""
        connection.execute(
            update(Evaluation)
            .where(Evaluation.c.sweep_id == sweep_id, Evaluation.c.status == "queued")
            .values(status="pending", wakeup_sent_at=None)
        )

    def _cancel_unstarted(self, connection: Connection, sweep_id: int, reason: str) -> None:
        ids = list(
            connection.execute(
                update(Evaluation)
                .where(
                    Evaluation.c.sweep_id == sweep_id,
                    Evaluation.c.status.in_(("pending", "queued")),
                )
                .values(status="cancelled", finished_at=now_utc(), error=reason)
                .returning(Evaluation.c.id)
            ).scalars()
        )
        if ids:
            record_event(
                connection, sweep_id=sweep_id, status="cancelled", detail=f"{reason}: {len(ids)}"
            )

    def _release(self, connection: Connection, sweep_id: int, max_parallel: int) -> list[int]:
        """Queue the pending evaluations of at most `max_parallel` trials at a time."""
        rows = connection.execute(
            select(Evaluation.c.trial_id, Evaluation.c.status)
            .where(Evaluation.c.sweep_id == sweep_id, Evaluation.c.status.in_(LIVE_EVALUATION))
            .order_by(Evaluation.c.trial_id)
        ).all()
        started = {trial for trial, status in rows if status != "pending"}
        waiting = sorted({trial for trial, status in rows if status == "pending"})
        chosen = [trial for trial in waiting if trial in started]
        room = max_parallel - len(started)
        chosen += [trial for trial in waiting if trial not in started][: max(room, 0)]
        if not chosen:
            return []
        now = now_utc()
        released = list(
            connection.execute(
                update(Evaluation)
                .where(
                    Evaluation.c.sweep_id == sweep_id,
                    Evaluation.c.trial_id.in_(chosen),
                    Evaluation.c.status == "pending",
                )
                .values(status="queued", wakeup_sent_at=now)
                .returning(Evaluation.c.id)
            ).scalars()
        )
        connection.execute(
            update(Trial)
            .where(Trial.c.id.in_(chosen), Trial.c.status == "pending")
            .values(status="running")
        )
        return sorted(int(evaluation_id) for evaluation_id in released)

    # -- finishing trials -------------------------------------------------------------------
    def _settle_trials(self, connection: Connection, sweep_id: int, spec: SweepSpec) -> None:
        """Report new unit results to the pruner; finish trials with nothing left to run."""
        counts = connection.execute(
            select(Evaluation.c.trial_id, Evaluation.c.status, func.count())
            .join(Trial, Trial.c.id == Evaluation.c.trial_id)
            .where(Evaluation.c.sweep_id == sweep_id, Trial.c.status.in_(ACTIVE_TRIAL))
            .group_by(Evaluation.c.trial_id, Evaluation.c.status)
        ).all()
        by_trial: dict[int, dict[str, int]] = {}
        for trial_id, status, count in counts:
            by_trial.setdefault(int(trial_id), {})[status] = int(count)
        prune = spec.early_stopping.pruner != "none" and len(spec.objectives) == 1
        for trial_id, statuses in by_trial.items():
            live = sum(statuses.get(status, 0) for status in LIVE_EVALUATION)
            if live == 0:
                self._finish_trial(connection, sweep_id, trial_id, spec)
            elif prune and statuses.get("succeeded"):
                self._maybe_prune(connection, sweep_id, trial_id, spec)

    def _unit_values(
        self, connection: Connection, trial_id: int
    ) -> tuple[list[dict[str, Any]], dict[str, int]]:
        rows = connection.execute(
            select(Evaluation.c.unit_index, Evaluation.c.status, Evaluation.c.metrics)
            .where(Evaluation.c.trial_id == trial_id)
            .order_by(Evaluation.c.unit_index)
        ).all()
        statuses: dict[str, int] = {}
        succeeded = []
        for unit_index, status, metrics in rows:
            statuses[status] = statuses.get(status, 0) + 1
            if status == "succeeded" and metrics is not None:
                succeeded.append({"unit_index": int(unit_index), **metrics})
        return succeeded, statuses

    def _maybe_prune(
        self, connection: Connection, sweep_id: int, trial_id: int, spec: SweepSpec
    ) -> None:
        from optuna.trial import Trial as OptunaTrial
        from optuna.trial import TrialState

        optuna_id = connection.execute(
            select(Trial.c.optuna_trial_id).where(Trial.c.id == trial_id)
        ).scalar_one()
        if optuna_id is None:
            return
        study = self.study(sweep_id, connection)
        units, _ = self._unit_values(connection, trial_id)
        metric = spec.objectives[0].metric
        frozen = study._storage.get_trial(optuna_id)
        if frozen.state != TrialState.RUNNING:
            return
        trial = OptunaTrial(study, optuna_id)
        _report_units(trial, frozen, units, metric)
        if not trial.should_prune():
            return
        now = now_utc()
        connection.execute(
            update(Evaluation)
            .where(
                Evaluation.c.trial_id == trial_id, Evaluation.c.status.in_(("pending", "queued"))
            )
            .values(status="cancelled", finished_at=now, error="pruned")
        )
        connection.execute(
            update(Evaluation)
            .where(Evaluation.c.trial_id == trial_id, Evaluation.c.status == "running")
            .values(cancel_requested=True)
        )
        metrics, objective = _aggregate(units, spec)
        study.tell(trial, state=TrialState.PRUNED)
        connection.execute(
            update(Trial)
            .where(Trial.c.id == trial_id)
            .values(
                status="pruned",
                metrics=metrics,
                objective=objective,
                n_succeeded=len(units),
                finished_at=now,
                told_at=now,
            )
        )
        record_event(
            connection,
            sweep_id=sweep_id,
            trial_id=trial_id,
            status="pruned",
            detail=f"after {len(units)} unit(s)",
        )

    def _finish_trial(
        self, connection: Connection, sweep_id: int, trial_id: int, spec: SweepSpec
    ) -> None:
        units, statuses = self._unit_values(connection, trial_id)
        metrics, objective = _aggregate(units, spec)
        if statuses.get("failed"):
            status = "failed"
        elif statuses.get("cancelled") and not units:
            status = "cancelled"
        elif statuses.get("cancelled"):
            # Some units were cut (wall-clock limit, cancel): the mean covers fewer units.
            status = "succeeded" if units else "cancelled"
        else:
            status = "succeeded"
        row = connection.execute(
            select(Trial.c.optuna_trial_id, Trial.c.told_at, Trial.c.params).where(
                Trial.c.id == trial_id
            )
        ).one()
        told_at = row.told_at
        if row.optuna_trial_id is not None:
            told_at = self._tell(
                connection, sweep_id, spec, row.optuna_trial_id, row.params, status, units
            )
        connection.execute(
            update(Trial)
            .where(Trial.c.id == trial_id, Trial.c.status.in_(ACTIVE_TRIAL))
            .values(
                status=status,
                metrics=metrics,
                objective=objective,
                n_succeeded=len(units),
                finished_at=now_utc(),
                told_at=told_at,
            )
        )
        record_event(connection, sweep_id=sweep_id, trial_id=trial_id, status=status)

    def _tell(
        self,
        connection: Connection,
        sweep_id: int,
        spec: SweepSpec,
        optuna_id: int,
        params: dict[str, Any],
        status: str,
        units: list[dict[str, Any]],
    ) -> datetime:
        """Tell Optuna once: a trial it already holds as finished (told before a crash, or a
        retried trial) is not told again; a retried result is added as a new finished trial."""
        from optuna.trial import Trial as OptunaTrial
        from optuna.trial import TrialState, create_trial

        study = self.study(sweep_id, connection)
        values = [_mean(units, objective.metric) for objective in spec.objectives]
        complete = status == "succeeded" and all(_finite(value) for value in values)
        frozen = study._storage.get_trial(optuna_id)
        if frozen.state == TrialState.RUNNING:
            if complete and len(spec.objectives) == 1:
                _report_units(
                    OptunaTrial(study, optuna_id), frozen, units, spec.objectives[0].metric
                )
            # (tell() reads an int as a trial number; ours are storage ids, hence the Trial.)
            if complete:
                study.tell(OptunaTrial(study, optuna_id), values)
            else:
                study.tell(OptunaTrial(study, optuna_id), state=TrialState.FAIL)
        elif frozen.state == TrialState.FAIL and complete:
            study.add_trial(
                create_trial(
                    params={name: params[name] for name in frozen.distributions},
                    distributions=frozen.distributions,
                    values=values,
                )
            )
        return now_utc()

    # -- cancelled sweeps -------------------------------------------------------------------
    def wind_down(self, sweep_id: int) -> None:
        """A cancelled sweep: close its trials (Optuna told FAIL) once nothing runs any more."""
        with self.fenced() as connection:
            self._cancel_unstarted(connection, sweep_id, "sweep cancelled")
            running = connection.execute(
                select(func.count())
                .select_from(Evaluation)
                .where(Evaluation.c.sweep_id == sweep_id, Evaluation.c.status == "running")
            ).scalar_one()
            if running:
                return
            spec = self.spec(sweep_id, connection)
            self._settle_trials(connection, sweep_id, spec)
            connection.execute(
                update(SweepTable).where(SweepTable.c.id == sweep_id).values(finished_at=now_utc())
            )
            self._studies.pop(sweep_id, None)

    # -- liveness ---------------------------------------------------------------------------
    def reap_expired(self) -> list[int]:
        """Evaluations whose worker stopped heart-beating: queued again (a new attempt), or
        failed after too many attempts; cancelled ones that lost their worker end cancelled."""
        now = now_utc()
        expired = and_(Evaluation.c.status == "running", Evaluation.c.lease_expires_at < now)
        with self.fenced() as connection:
            rows = connection.execute(
                select(
                    Evaluation.c.id,
                    Evaluation.c.sweep_id,
                    Evaluation.c.trial_id,
                    Evaluation.c.attempt,
                    Evaluation.c.cancel_requested,
                ).where(expired)
            ).all()
            requeued = []
            for row in rows:
                if row.cancel_requested:
                    status = "cancelled"
                    values: dict[str, object] = {"finished_at": now}
                elif row.attempt >= self.settings.sweep_max_attempts:
                    status = "failed"
                    values = {
                        "finished_at": now,
                        "error": f"worker lost {row.attempt} times (lease expired)",
                    }
                else:
                    status = "queued"
                    values = {"wakeup_sent_at": now}
                done = connection.execute(
                    update(Evaluation)
                    .where(Evaluation.c.id == row.id, expired, Evaluation.c.attempt == row.attempt)
                    .values(status=status, lease_owner=None, lease_expires_at=None, **values)
                ).rowcount
                if not done:
                    continue
                record_event(
                    connection,
                    sweep_id=row.sweep_id,
                    trial_id=row.trial_id,
                    evaluation_id=row.id,
                    status=status,
                    attempt=row.attempt,
                    detail="lease expired",
                )
                if status == "queued":
                    requeued.append(int(row.id))
        if requeued:
            logger.info("sweeps: %d evaluation(s) re-queued after lost workers", len(requeued))
        return requeued

    def resend_unclaimed(self) -> list[int]:
        """Queued evaluations nobody claimed for a while: their wake-up may have been lost."""
        now = now_utc()
        due = now - timedelta(seconds=self.settings.sweep_resend_after_seconds)
        with self.fenced() as connection:
            return sorted(
                int(evaluation_id)
                for evaluation_id in connection.execute(
                    update(Evaluation)
                    .where(
                        Evaluation.c.status == "queued",
                        or_(
                            Evaluation.c.wakeup_sent_at.is_(None), Evaluation.c.wakeup_sent_at < due
                        ),
                    )
                    .values(wakeup_sent_at=now)
                    .returning(Evaluation.c.id)
                ).scalars()
            )


def add_evaluations(connection: Connection, sweep_id: int, trial_id: int, spec: SweepSpec) -> None:
    """The trial's (seed, fold) units, pending, each pointing at its frozen dataset."""
    datasets: dict[int | None, int] = dict(
        connection.execute(
            select(Dataset.c.seed, Dataset.c.id).where(Dataset.c.sweep_id == sweep_id)
        ).all()
    )
    rows = []
    for unit_index, (seed, fold) in enumerate(spec.units()):
        dataset_id = (
            datasets[None] if isinstance(spec.evaluation, HoldoutEvaluation) else datasets[seed]
        )
        rows.append(
            {
                "sweep_id": sweep_id,
                "trial_id": trial_id,
                "unit_index": unit_index,
                "seed": seed,
                "fold": fold,
                "dataset_id": dataset_id,
                "status": "pending",
                "created_at": now_utc(),
            }
        )
    connection.execute(insert(Evaluation), rows)


def _report_units(trial: Any, frozen: Any, units: list[dict[str, Any]], metric: str) -> None:
    """Report each unit's value to the pruner (step = unit index), once per unit."""
    for unit in units:
        value = unit.get(metric)
        if unit["unit_index"] in frozen.intermediate_values or not isinstance(value, int | float):
            continue
        if math.isfinite(value):
            trial.report(float(value), unit["unit_index"])


def _tags_text(tags: list[str]) -> str:
    return "," + "".join(f"{tag}," for tag in tags)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _mean(units: list[dict[str, Any]], metric: str) -> float:
    values = [float(unit[metric]) for unit in units if _finite(unit.get(metric))]
    return float(np.mean(values)) if values else float("nan")


def _aggregate(
    units: list[dict[str, Any]], spec: SweepSpec
) -> tuple[dict[str, float], float | None]:
    names = sorted({name for unit in units for name in unit if name != "unit_index"})
    metrics = {}
    for name in names:
        mean = _mean(units, name)
        if math.isfinite(mean):
            metrics[name] = mean
    objective = metrics.get(spec.objectives[0].metric)
    return metrics, objective


def _combined(fingerprints: list[str]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(fingerprints).encode()).hexdigest()
