"""One claimed sweep evaluation end to end: frozen data → training (heart-beating) → result."""

from __future__ import annotations

import io
import logging
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.engine import Engine

from app.core.config import Settings
from app.core.errors import public_error
from app.core.version import code_version, git_commit
from app.models import SweepDataset
from app.runs.wakeups import wake_workers
from app.sweeps import execution
from app.sweeps.execution import EvaluationClaim, EvaluationLost
from workers import lifetime, metrics

if TYPE_CHECKING:
    from ml.licchavi import EpochReport
    from ml.sweep.datasets import FrozenDataset

logger = logging.getLogger(__name__)

Dataset = SweepDataset.__table__  # type: ignore[attr-defined]
# Decoded datasets kept per process: every trial of a sweep reads the same few.
CACHED_DATASETS = 8


class CappedLog(logging.Handler):
    """Keeps the first `limit` bytes of what is logged during one evaluation."""

    def __init__(self, limit: int) -> None:
        super().__init__(logging.INFO)
        self.limit = limit
        self.buffer = io.StringIO()
        self.size = 0
        self.dropped = 0
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        line = self.format(record) + "\n"
        if self.size + len(line) > self.limit:
            self.dropped += 1
            return
        self.buffer.write(line)
        self.size += len(line)

    def text(self) -> str:
        tail = f"[{self.dropped} more line(s) dropped]\n" if self.dropped else ""
        return self.buffer.getvalue() + tail


class EvaluationRunner:
    """Runs claims in this process; keeps recently used frozen datasets decoded."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self._datasets: OrderedDict[int, tuple[FrozenDataset, str, str]] = OrderedDict()

    def dataset(self, dataset_id: int) -> tuple[FrozenDataset, str, str]:
        from ml.sweep.datasets import FrozenDataset

        if dataset_id in self._datasets:
            self._datasets.move_to_end(dataset_id)
            return self._datasets[dataset_id]
        with self.engine.connect() as connection:
            row = connection.execute(
                select(Dataset.c.payload, Dataset.c.fingerprint, Dataset.c.split_fingerprint).where(
                    Dataset.c.id == dataset_id
                )
            ).one()
        entry = (FrozenDataset.from_bytes(row.payload), row.fingerprint, row.split_fingerprint)
        self._datasets[dataset_id] = entry
        while len(self._datasets) > CACHED_DATASETS:
            self._datasets.popitem(last=False)
        return entry

    def run(self, claim: EvaluationClaim) -> str:
        """Returns how the evaluation ended: succeeded, failed, cancelled, lost, or handed back
        (queued again for another worker: this one is stopping)."""
        from ml.config import LicchaviConfig, config_hash
        from ml.licchavi import TrainingCancelled
        from ml.sweep.evaluate import evaluate_unit

        capture = CappedLog(self.settings.sweep_log_max_bytes)
        engine_logger = logging.getLogger("ml")
        engine_logger.addHandler(capture)
        heartbeat = Heartbeat(self.engine, claim, self.settings)
        try:
            dataset, fingerprint, split_fingerprint = self.dataset(claim.dataset_id)
            config = LicchaviConfig.model_validate({**claim.config, "seed": claim.seed})
            logger.info(
                "evaluation %s: trial %s unit %s (seed %s, fold %s), attempt %s",
                claim.evaluation_id,
                claim.trial_id,
                claim.unit_index,
                claim.seed,
                claim.fold,
                claim.attempt,
            )
            heartbeat.beat(progress=0.0)  # decoding a large dataset may have taken a while
            outcome = evaluate_unit(dataset, config, test_fold=claim.fold, on_epoch=heartbeat)
        except EvaluationLost:
            return "lost"
        except TrainingCancelled:
            if heartbeat.handing_off:
                # The worker is stopping: another one starts the evaluation over now (an
                # evaluation is short and keeps no checkpoint) rather than after the lease.
                if not execution.hand_back(self.engine, claim):
                    return "lost"
                wake_workers(reason=f"evaluation {claim.evaluation_id} handed back")
                return "handed back"
            ended = execution.finish(
                self.engine, claim, status="cancelled", values={"log": capture.text()}
            )
            return "cancelled" if ended else "lost"
        except Exception as exc:
            # The traceback goes to the log; the public fields get a clean one-line message.
            logger.exception("evaluation %s failed", claim.evaluation_id)
            error = public_error(exc)
            ended = execution.finish(
                self.engine,
                claim,
                status="failed",
                values={"error": error, "log": capture.text()},
                detail=error,
            )
            return "failed" if ended else "lost"
        finally:
            engine_logger.removeHandler(capture)
        ended = execution.finish(
            self.engine,
            claim,
            status="succeeded",
            values={
                "metrics": outcome.metrics,
                "history": outcome.history,
                "log": capture.text(),
                "error": None,
                "config_hash": config_hash(config),
                "code_version": code_version(),
                "git_commit": git_commit(),
                "data_fingerprint": fingerprint,
                "split_fingerprint": split_fingerprint,
            },
        )
        return "succeeded" if ended else "lost"


class Heartbeat:
    """The engine's per-epoch callback: renews the lease every few seconds, stops on cancel, and
    stops when the worker asks its work to hand off (`handing_off` then tells why it stopped)."""

    def __init__(self, engine: Engine, claim: EvaluationClaim, settings: Settings) -> None:
        self.engine = engine
        self.claim = claim
        self.settings = settings
        self.last = time.monotonic()
        self.handing_off = False

    def __call__(self, report: EpochReport) -> bool:
        if lifetime.handoff_requested.is_set():
            self.handing_off = True
            return False
        if time.monotonic() - self.last < self.settings.sweep_heartbeat_seconds:
            return True
        return not self.beat(progress=min(1.0, report.epoch / max(report.max_epochs, 1)))

    def beat(self, *, progress: float) -> bool:
        """Renew the lease now; returns whether a cancel was asked."""
        self.last = time.monotonic()
        cancel = execution.heartbeat(
            self.engine,
            self.claim,
            lease_seconds=self.settings.sweep_lease_seconds,
            progress=progress,
        )
        metrics.lease_renewed("evaluation")
        return cancel
