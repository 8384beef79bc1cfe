"""SQLModel tables; importing this package registers every table on the shared metadata."""

from app.models.api_key import ApiKey
from app.models.catalog import Criterion, User, Video
from app.models.comparison import Comparison
from app.models.sweeps import (
    SchedulerLease,
    Sweep,
    SweepDataset,
    SweepEvaluation,
    SweepEvent,
    SweepTrial,
    TrainingDefaults,
)
from app.models.training import (
    GlobalScore,
    LocalScore,
    ModelState,
    PublishedRun,
    TrainingMetric,
    TrainingRun,
    TrainingRunCriterion,
)
from app.models.worker import WorkerHeartbeat

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
