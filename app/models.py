"""Every domain's SQLModel tables in one place: importing this module registers them all on the
shared metadata (Alembic's `env.py` does), and `from app.models import TrainingRun` names any."""

from app.catalog.models import Criterion, User, Video
from app.comparisons.models import Comparison
from app.identity.models import ApiKey
from app.runs.models import (
    GlobalScore,
    LocalScore,
    ModelState,
    PublishedRun,
    TrainingMetric,
    TrainingRun,
    TrainingRunCriterion,
    WorkerHeartbeat,
)
from app.sweeps.models import (
    SchedulerLease,
    Sweep,
    SweepDataset,
    SweepEvaluation,
    SweepEvent,
    SweepTrial,
    TrainingDefaults,
)

__all__ = [
    "ApiKey",
    "Comparison",
    "Criterion",
    "GlobalScore",
    "LocalScore",
    "ModelState",
    "PublishedRun",
    "SchedulerLease",
    "Sweep",
    "SweepDataset",
    "SweepEvaluation",
    "SweepEvent",
    "SweepTrial",
    "TrainingDefaults",
    "TrainingMetric",
    "TrainingRun",
    "TrainingRunCriterion",
    "User",
    "Video",
    "WorkerHeartbeat",
]
