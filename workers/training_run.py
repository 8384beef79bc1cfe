"""Training from a worker's side: list a claimed run's criteria, then train one claimed criterion
(snapshot → engine with progress and checkpoints → staged scores, published by the last one)."""

import logging
import math
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import bindparam, insert, select, text
from sqlalchemy.engine import Engine

from app.core.config import Settings
from app.core.db import read_only
from app.models import TrainingMetric, TrainingRun
from app.runs import fanout, leases, publication
from app.runs.snapshot import ComparisonSnapshot, load_snapshot
from workers import lifetime, metrics

if TYPE_CHECKING:
    from ml.data import CriterionComparisons
    from ml.licchavi import CriterionResult, EpochReport, LicchaviState

logger = logging.getLogger(__name__)

Run = TrainingRun.__table__  # type: ignore[attr-defined]
Metric = TrainingMetric.__table__  # type: ignore[attr-defined]


class NothingToTrain(ValueError):
    """The run names a criterion that has no comparisons; `skip` when the run is an automatic
    one whose comparisons were all deleted before it started (it ends cancelled, not failed)."""

    def __init__(self, message: str, *, skip: bool = False) -> None:
        super().__init__(message)
        self.skip = skip


class HandedOff(Exception):
    """The worker is stopping: the criterion checkpointed and must go to another worker."""


class ProgressReporter:
    """The engine's callback: buffers metrics, and every few seconds writes them with the
    progress, renews the criterion's lease (and the run's) and reads the cancel flag;
    checkpoints every few epochs, and no more often than every few seconds, so saving a large
    state stays a small overhead. The first checkpoint comes after the first few epochs, with
    no wait, so a criterion killed early does not start over. Stops the engine when the worker
    asks its work to hand off."""

    def __init__(
        self, engine: Engine, claim: fanout.CriterionClaim, settings: Settings, resumed_epoch: int
    ):
        self.engine = engine
        self.claim = claim
        self.settings = settings
        self.last_checkpoint_epoch = resumed_epoch
        self.last_checkpoint_at = -math.inf
        self.last_flush = time.monotonic()
        self.pending: list[dict[str, Any]] = []
        self.progress = 0.0
        self.epoch = 0
        self.max_epochs: int | None = None
        self.handing_off = False

    def __call__(self, report: "EpochReport") -> bool:
        self.epoch = report.epoch
        self.max_epochs = report.max_epochs
        self.progress = min(1.0, report.epoch / max(report.max_epochs, 1))
        for name, value in report.history_row.items():
            if isinstance(value, int | float) and math.isfinite(value):
                self.pending.append(
                    {
                        "run_id": self.claim.run_id,
                        "criterion": self.claim.criterion,
                        "epoch": report.epoch,
                        "name": name,
                        "value": float(value),
                        "attempt": self.claim.attempt,
                    }
                )
        if lifetime.handoff_requested.is_set():
            # The engine stops after this epoch and raises TrainingCancelled with its state,
            # which is checkpointed with the metrics buffered up to here.
            self.handing_off = True
            return False
        checkpoint = None
        settings = self.settings
        if (
            report.epoch - self.last_checkpoint_epoch >= settings.run_checkpoint_every_epochs
            and time.monotonic() - self.last_checkpoint_at >= settings.run_checkpoint_every_seconds
        ):
            checkpoint = report.snapshot()
            self.last_checkpoint_epoch = report.epoch
            self.last_checkpoint_at = time.monotonic()
        due = time.monotonic() - self.last_flush >= self.settings.run_progress_interval_seconds
        if checkpoint is None and not due:
            return True
        return not self.flush(checkpoint)

    def flush(self, checkpoint: "LicchaviState | None" = None) -> bool:
        """Write buffered metrics (and a checkpoint) with the progress; True if cancel was asked.

        A checkpoint and the metrics up to its epoch commit together, so a resumed criterion
        never repeats or misses an epoch's metrics.
        """
        with self.engine.begin() as connection:
            if self.pending:
                connection.execute(insert(Metric), self.pending)
            if checkpoint is not None:
                publication.save_state(
                    connection,
                    run_id=self.claim.run_id,
                    criterion=self.claim.criterion,
                    epoch=checkpoint.epochs_run,
                    state=checkpoint.to_bytes(),
                    is_checkpoint=True,
                )
            cancel = fanout.renew(
                connection,
                self.claim,
                lease_seconds=self.settings.run_lease_seconds,
                progress=self.progress,
                epoch=self.epoch,
                max_epochs=self.max_epochs,
            )
        metrics.lease_renewed("run")
        self.pending = []
        self.last_flush = time.monotonic()
        return cancel


def list_run_criteria(engine: Engine, claim: leases.Claim) -> tuple[int, list[str] | None]:
    """Record the claimed run's criteria as claimable rows (once: a run taken over keeps the
    ones it has); returns (criteria left to train, the criteria published if none was).

    Which criteria: those asked for, else every criterion with comparisons or published
    scores. Raises NothingToTrain for a run that would do nothing, or that names a criterion
    without comparisons (an auto run skips such a criterion instead).
    """
    reader = read_only(engine)  # reads take no write lock on SQLite
    with reader.begin() as connection:
        criteria, trigger = connection.execute(
            select(Run.c.criteria, Run.c.trigger).where(Run.c.id == claim.run_id)
        ).one()
        # Every criterion loads its comparisons after this instant, so it is the run's
        # snapshot time: what it trains on includes everything committed before it.
        taken_at = datetime.now(UTC)
        present = set(connection.execute(_with_comparisons(criteria)).scalars())
        served = publication.published_criteria(connection)
    wanted = list(criteria) if criteria else sorted(present | set(served))
    names = [name for name in wanted if name in present]
    # A criterion whose last comparison was deleted has published scores nothing supports any
    # more: the run publishes it empty (its pointer moves to this run, which has no scores for
    # it), so those scores stop being served and no older run in flight can bring them back.
    withdrawn = [name for name in wanted if name not in present and name in served]
    # A manual run asking for a criterion with neither comparisons nor scores would do nothing
    # for it: most likely a mistake, so it fails saying so. An auto run then just skips it.
    idle = [name for name in wanted if name not in present and name not in served]
    if (not names and not withdrawn) or (idle and trigger != "auto"):
        raise NothingToTrain(
            f"no comparisons for criterion {', '.join(idle) or '(any)'}", skip=trigger == "auto"
        )
    with engine.begin() as connection:
        return fanout.list_criteria(
            connection, claim, names=names, withdrawn=withdrawn, snapshot_at=taken_at
        )


def _with_comparisons(criteria: list[str] | None) -> Any:
    """The names of the criteria (of `criteria`, or all) that have a comparison. Named ones are
    probed one by one (an auto run names one: its first comparison ends the probe); all of them
    take one pass over the comparisons."""
    if criteria:
        return text(
            "SELECT c.name FROM criteria c WHERE c.name IN :names"
            " AND EXISTS (SELECT 1 FROM comparisons m WHERE m.criterion_id = c.id)"
        ).bindparams(bindparam("names", value=list(criteria), expanding=True))
    return text(
        "SELECT c.name FROM criteria c"
        " WHERE c.id IN (SELECT DISTINCT criterion_id FROM comparisons)"
    )


class CriterionTraining:
    """Trains one claimed criterion; raises TrainingCancelled, HandedOff, LeaseLost or any error
    to the task. Returns the criteria published when it was the run's last one, else None."""

    def __init__(self, engine: Engine, claim: fanout.CriterionClaim, settings: Settings) -> None:
        self.engine = engine
        self.claim = claim
        self.settings = settings

    def run(self) -> list[str] | None:
        from ml.config import LicchaviConfig
        from ml.data import ComparisonDataset
        from ml.licchavi import TrainingCancelled
        from ml.licchavi.problem import data_fingerprint

        name = self.claim.criterion
        reader = read_only(self.engine)
        with reader.connect() as connection:
            config_values, warm_start = connection.execute(
                select(Run.c.config, Run.c.warm_start).where(Run.c.id == self.claim.run_id)
            ).one()
        started = time.perf_counter()
        with reader.begin() as connection:
            snapshot = load_snapshot(connection, criteria=[name])
            served = publication.published_criteria(connection)
        # Trust shapes the voting rights; without any trusted user every right is 1 (v1's J).
        dataset = ComparisonDataset.from_frame(snapshot.frame).with_trusted(snapshot.trusted)
        if name not in dataset.criteria:
            # Its last comparison was deleted after the run listed it: withdrawn as above.
            with self.engine.begin() as connection:
                return fanout.finish(
                    connection,
                    self.claim,
                    status="withdrawn" if name in served else "skipped",
                )
        data = dataset.criteria[name]
        fingerprint = data_fingerprint(data)
        loaded = time.perf_counter()
        config = LicchaviConfig.model_validate(config_values)
        initial, resumed_epoch = self._initial_state(fingerprint, warm_start)
        # Loading the comparisons and the starting state takes a while on a large set, and no
        # report renews the lease before the first epochs: renew it now (or learn of a cancel).
        with self.engine.begin() as connection:
            fanout.extend(connection, self.claim, lease_seconds=self.settings.run_lease_seconds)
        reporter = ProgressReporter(self.engine, self.claim, self.settings, resumed_epoch)
        result = self._train(data, config, initial, reporter)
        if reporter.flush():
            raise TrainingCancelled(name, result.epochs)
        output = _output(result, data, snapshot)
        trained = time.perf_counter()
        # Scores in short transactions first, each fenced by the criterion's lease, then one
        # small transaction that records the criterion (and publishes the run if it was the
        # last): on SQLite every transaction here holds the database's only write lock.
        fanout.stage(self.engine, self.claim, output, lease_seconds=self.settings.run_lease_seconds)
        stored = time.perf_counter()
        with self.engine.begin() as connection:
            published = fanout.finish(
                connection,
                self.claim,
                data_fingerprint=fingerprint,
                n_comparisons=data.n_comparisons,
                n_trusted=_trusted_contributors(data),
            )
        logger.info(
            "run %s: %s, %d comparisons; snapshot %.2f s, training %.2f s, staging %.2f s,"
            " finish %.3f s",
            self.claim.run_id,
            name,
            data.n_comparisons,
            loaded - started,
            trained - loaded,
            stored - trained,
            time.perf_counter() - stored,
        )
        return published

    def _train(
        self,
        data: "CriterionComparisons",
        config: Any,
        initial: "LicchaviState | None",
        reporter: ProgressReporter,
    ) -> "CriterionResult":
        """Train the criterion; on a hand-off, checkpoint where the engine stopped, then raise
        HandedOff."""
        from ml.licchavi import TrainingCancelled, train_criterion

        try:
            return train_criterion(data, config, initial_state=initial, callback=reporter)
        except TrainingCancelled as stopped:
            if not reporter.handing_off or stopped.state is None:
                raise
            reporter.flush(stopped.state)
            message = (
                f"run {self.claim.run_id}: {self.claim.criterion} handed off"
                f" at epoch {stopped.epoch}"
            )
            raise HandedOff(message) from None

    def _initial_state(
        self, fingerprint: str, warm_start: bool
    ) -> tuple["LicchaviState | None", int]:
        """This criterion's checkpoint (resume after a crash), else the published state (warm
        start).

        Metrics a crashed attempt wrote after its last checkpoint are removed, so every epoch's
        metrics are written exactly once.
        """
        from ml.licchavi import LicchaviState

        run_id, criterion = self.claim.run_id, self.claim.criterion
        with self.engine.begin() as connection:
            payload = publication.latest_state(
                connection, run_id=run_id, criterion=criterion, checkpoint=True
            )
            checkpoint = LicchaviState.from_bytes(payload) if payload else None
            resumable = checkpoint is not None and checkpoint.data_fingerprint == fingerprint
            kept_epochs = checkpoint.epochs_run if checkpoint is not None and resumable else 0
            connection.execute(
                text(
                    "DELETE FROM training_metrics WHERE run_id = :run AND criterion = :criterion"
                    " AND epoch > :epoch"
                ),
                {"run": run_id, "criterion": criterion, "epoch": kept_epochs},
            )
            if checkpoint is not None:
                logger.info(
                    "run %s: %s %s from epoch %s",
                    run_id,
                    criterion,
                    "resumes" if resumable else "warm-starts from the checkpoint",
                    checkpoint.epochs_run,
                )
                return checkpoint, kept_epochs
            if not warm_start:
                return None, 0
            published = publication.published_state(connection, criterion=criterion)
        return (LicchaviState.from_bytes(published) if published else None), 0


def _trusted_contributors(data: "CriterionComparisons") -> int:
    """Trusted users among the criterion's contributors (the record of the trust its voting
    rights used)."""
    if data.trusted is None:
        return 0
    return len({str(user) for user in data.user_ids[data.trusted]})


def _database_ids(external: np.ndarray, ids: dict[str, int]) -> np.ndarray:
    return np.fromiter((ids[str(value)] for value in external), dtype=np.int64, count=len(external))


def _output(
    result: "CriterionResult", data: "CriterionComparisons", snapshot: ComparisonSnapshot
) -> publication.CriterionOutput:
    video_ids = _database_ids(result.video_ids, snapshot.video_ids)
    user_ids = _database_ids(result.user_ids, snapshot.user_ids)
    return publication.CriterionOutput(
        criterion_id=snapshot.criterion_ids[data.criterion],
        criterion=data.criterion,
        epoch=result.epochs,
        state=result.state.to_bytes(),
        video_ids=video_ids,
        global_scores=np.asarray(result.global_scores, dtype=np.float64),
        global_uncertainty=np.asarray(result.global_uncertainty, dtype=np.float64),
        n_comparisons=np.asarray(result.n_comparisons, dtype=np.int64),
        n_contributors=np.asarray(result.n_contributors, dtype=np.int64),
        local_user_ids=user_ids[result.local_user_index],
        local_video_ids=video_ids[result.local_video_index],
        local_scores=np.asarray(result.local_scores, dtype=np.float64),
        local_uncertainty=np.asarray(result.local_uncertainty, dtype=np.float64),
    )
