"""One claimed training run end to end: snapshot → engine (progress, checkpoints) → publication."""

import hashlib
import logging
import math
import time
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import insert, select, text
from sqlalchemy.engine import Engine

from app.core.config import Settings
from app.core.db import read_only
from app.models import TrainingMetric, TrainingRun
from app.services import leases, publication
from app.services.snapshot import ComparisonSnapshot, load_snapshot
from workers import lifetime, metrics

if TYPE_CHECKING:
    from ml.data import ComparisonDataset, CriterionComparisons
    from ml.licchavi import CriterionResult, EpochReport, LicchaviState

logger = logging.getLogger(__name__)

Run = TrainingRun.__table__  # type: ignore[attr-defined]
Metric = TrainingMetric.__table__  # type: ignore[attr-defined]


class NothingToTrain(ValueError):
    """The run names a criterion that has no comparisons."""


class HandedOff(Exception):
    """The worker is stopping: the run checkpointed and must be given to another worker."""


class ProgressReporter:
    """The engine's callback: buffers metrics, and every few seconds writes them with the
    progress, renews the lease and reads the cancel flag; checkpoints every few epochs, and
    no more often than every few seconds, so saving a large state stays a small overhead.
    The first checkpoint of a criterion comes after its first few epochs, with no wait, so a
    run killed early does not start over. Stops the engine when the worker asks runs to hand
    off."""

    def __init__(self, engine: Engine, claim: leases.Claim, settings: Settings, n_criteria: int):
        self.engine = engine
        self.claim = claim
        self.settings = settings
        self.n_criteria = n_criteria
        self.index = 0
        self.criterion = ""
        self.last_checkpoint_epoch = 0
        self.last_checkpoint_at = time.monotonic()
        self.last_flush = time.monotonic()
        self.pending: list[dict[str, Any]] = []
        self.progress = 0.0
        self.epoch = 0
        self.max_epochs: int | None = None
        self.handing_off = False

    def start_criterion(self, index: int, criterion: str, resumed_epoch: int) -> None:
        self.index = index
        self.criterion = criterion
        self.last_checkpoint_epoch = resumed_epoch
        self.last_checkpoint_at = -math.inf

    def __call__(self, report: "EpochReport") -> bool:
        self.epoch = report.epoch
        self.max_epochs = report.max_epochs
        fraction = min(1.0, report.epoch / max(report.max_epochs, 1))
        self.progress = (self.index + fraction) / self.n_criteria
        for name, value in report.history_row.items():
            if isinstance(value, int | float) and math.isfinite(value):
                self.pending.append(
                    {
                        "run_id": self.claim.run_id,
                        "criterion": self.criterion,
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

        A checkpoint and the metrics up to its epoch commit together, so a resumed run never
        repeats or misses an epoch's metrics.
        """
        with self.engine.begin() as connection:
            if self.pending:
                connection.execute(insert(Metric), self.pending)
            if checkpoint is not None:
                publication.save_state(
                    connection,
                    run_id=self.claim.run_id,
                    criterion=self.criterion,
                    epoch=checkpoint.epochs_run,
                    state=checkpoint.to_bytes(),
                    is_checkpoint=True,
                )
            cancel = leases.renew(
                connection,
                self.claim,
                lease_seconds=self.settings.run_lease_seconds,
                progress=self.progress,
                epoch=self.epoch,
                criterion=self.criterion,
                max_epochs=self.max_epochs,
            )
        metrics.lease_renewed("run")
        self.pending = []
        self.last_flush = time.monotonic()
        return cancel


class TrainingExecution:
    """Runs a claimed run; raises TrainingCancelled, LeaseLost or any error to the task."""

    def __init__(self, engine: Engine, claim: leases.Claim, settings: Settings) -> None:
        self.engine = engine
        self.claim = claim
        self.settings = settings

    def run(self) -> list[str]:
        from ml.config import LicchaviConfig
        from ml.data import ComparisonDataset
        from ml.licchavi.problem import data_fingerprint

        # Reads take no write lock on SQLite: API writes go on while the snapshot loads.
        reader = read_only(self.engine)
        with reader.connect() as connection:
            row = connection.execute(
                select(Run.c.criteria, Run.c.config, Run.c.warm_start, Run.c.trigger).where(
                    Run.c.id == self.claim.run_id
                )
            ).one()
        criteria, config_values, warm_start, trigger = row
        started = time.perf_counter()
        with reader.begin() as connection:
            snapshot = load_snapshot(connection, criteria=criteria)
        # Trust shapes the voting rights; without any trusted user every right is 1 (v1's J).
        dataset = ComparisonDataset.from_frame(snapshot.frame).with_trusted(snapshot.trusted)
        with self.engine.connect() as connection:
            served = publication.published_criteria(connection)
        wanted = list(criteria) if criteria else sorted(set(dataset.criteria) | set(served))
        names = [name for name in wanted if name in dataset.criteria]
        # A criterion whose last comparison was deleted has published scores nothing supports any
        # more: the run publishes it empty (its pointer moves to this run, which has no scores for
        # it), so those scores stop being served and no older run in flight can bring them back.
        withdrawn = [name for name in wanted if name not in dataset.criteria and name in served]
        # A manual run asking for a criterion with neither comparisons nor scores would do nothing
        # for it: most likely a mistake, so it fails saying so. An auto run then just skips it.
        idle = [name for name in wanted if name not in dataset.criteria and name not in served]
        if (not names and not withdrawn) or (idle and trigger != "auto"):
            raise NothingToTrain(f"no comparisons for criterion {', '.join(idle) or '(any)'}")
        fingerprints = {name: data_fingerprint(dataset.criteria[name]) for name in names}
        with self.engine.begin() as connection:
            leases.record_snapshot(
                connection,
                self.claim,
                fingerprint=_combined(fingerprints),
                n_comparisons=sum(dataset.criteria[name].n_comparisons for name in names),
                n_trusted=_trusted_contributors(dataset, names),
                at=snapshot.taken_at,
            )
        loaded = time.perf_counter()
        config = LicchaviConfig.model_validate(config_values)
        reporter = ProgressReporter(self.engine, self.claim, self.settings, max(len(names), 1))
        outputs = []
        for index, name in enumerate(names):
            result = self._trained_before(name, fingerprints[name], config, dataset)
            if result is None:
                initial, resumed_epoch = self._initial_state(name, fingerprints[name], warm_start)
                reporter.start_criterion(index, name, resumed_epoch)
                result = self._train(dataset.criteria[name], config, initial, reporter)
                if reporter.flush():
                    from ml.licchavi import TrainingCancelled

                    raise TrainingCancelled(name, result.epochs)
                if index < len(names) - 1:
                    self._keep_finished(name, result, reporter)
            outputs.append(_output(result, dataset.criteria[name], snapshot))
        trained = time.perf_counter()
        # Scores in short transactions first, then one small transaction that publishes them:
        # on SQLite every transaction here holds the database's only write lock.
        staged = publication.stage(
            self.engine, self.claim, outputs, lease_seconds=self.settings.run_lease_seconds
        )
        stored = time.perf_counter()
        with self.engine.begin() as connection:
            published = publication.publish(
                connection,
                self.claim,
                staged,
                snapshot.taken_at,
                withdrawn=[snapshot.criterion_ids[name] for name in withdrawn],
            )
        logger.info(
            "run %s: %d comparisons; snapshot %.2f s, training %.2f s, scores %.2f s,"
            " publication %.3f s",
            self.claim.run_id,
            snapshot.n_comparisons,
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
        """Train one criterion; on a hand-off, checkpoint where the engine stopped, then raise
        HandedOff."""
        from ml.licchavi import TrainingCancelled, train_criterion

        try:
            return train_criterion(data, config, initial_state=initial, callback=reporter)
        except TrainingCancelled as stopped:
            if not reporter.handing_off or stopped.state is None:
                raise
            reporter.flush(stopped.state)
            message = f"run {self.claim.run_id}: handed off at epoch {stopped.epoch}"
            raise HandedOff(message) from None

    def _keep_finished(
        self, criterion: str, result: "CriterionResult", reporter: ProgressReporter
    ) -> None:
        """Store a finished criterion's final state (with the lease renewed), so a crash while
        a later criterion trains does not train this one again."""
        with self.engine.begin() as connection:
            leases.renew(
                connection,
                self.claim,
                lease_seconds=self.settings.run_lease_seconds,
                progress=reporter.progress,
                epoch=reporter.epoch,
                criterion=criterion,
                max_epochs=reporter.max_epochs,
            )
            publication.save_state(
                connection,
                run_id=self.claim.run_id,
                criterion=criterion,
                epoch=result.epochs,
                state=result.state.to_bytes(),
                is_checkpoint=False,
            )

    def _trained_before(
        self, criterion: str, fingerprint: str, config: Any, dataset: Any
    ) -> "CriterionResult | None":
        """The result of this criterion from an earlier attempt of this run, if it finished."""
        from ml.licchavi import LicchaviState, finished_result

        with self.engine.connect() as connection:
            payload = publication.latest_state(
                connection, run_id=self.claim.run_id, criterion=criterion, checkpoint=False
            )
        if payload is None:
            return None
        state = LicchaviState.from_bytes(payload)
        if state.data_fingerprint != fingerprint:
            return None
        try:
            result = finished_result(dataset.criteria[criterion], config, state)
        except ValueError:
            return None
        logger.info(
            "run %s: %s already trained by an earlier attempt", self.claim.run_id, criterion
        )
        return result

    def _initial_state(
        self, criterion: str, fingerprint: str, warm_start: bool
    ) -> tuple["LicchaviState | None", int]:
        """This run's checkpoint (resume after a crash), else the published state (warm start).

        Metrics a crashed attempt wrote after its last checkpoint are removed, so every epoch's
        metrics are written exactly once.
        """
        from ml.licchavi import LicchaviState

        with self.engine.begin() as connection:
            payload = publication.latest_state(
                connection, run_id=self.claim.run_id, criterion=criterion, checkpoint=True
            )
            checkpoint = LicchaviState.from_bytes(payload) if payload else None
            resumable = checkpoint is not None and checkpoint.data_fingerprint == fingerprint
            kept_epochs = checkpoint.epochs_run if checkpoint is not None and resumable else 0
            connection.execute(
                text(
                    "DELETE FROM training_metrics WHERE run_id = :run AND criterion = :criterion"
                    " AND epoch > :epoch"
                ),
                {"run": self.claim.run_id, "criterion": criterion, "epoch": kept_epochs},
            )
            if checkpoint is not None:
                logger.info(
                    "run %s: %s %s from epoch %s",
                    self.claim.run_id,
                    criterion,
                    "resumes" if resumable else "warm-starts from the checkpoint",
                    checkpoint.epochs_run,
                )
                return checkpoint, kept_epochs
            if not warm_start:
                return None, 0
            published = publication.published_state(connection, criterion=criterion)
        return (LicchaviState.from_bytes(published) if published else None), 0


def _trusted_contributors(dataset: "ComparisonDataset", names: list[str]) -> int:
    """Trusted users among the contributors of the criteria trained (the run's record of the
    trust its voting rights used)."""
    users: set[str] = set()
    for name in names:
        data = dataset.criteria[name]
        if data.trusted is not None:
            users.update(str(user) for user in data.user_ids[data.trusted])
    return len(users)


def _combined(fingerprints: dict[str, str]) -> str:
    digest = hashlib.sha256()
    for name in sorted(fingerprints):
        digest.update(f"{name}:{fingerprints[name]}\n".encode())
    return digest.hexdigest()


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
