"""Licchavi: federated local/global scoring of pairwise comparisons (v1 objective, two solvers)."""

from ml.licchavi.state import LicchaviState
from ml.licchavi.trainer import (
    CriterionResult,
    EpochReport,
    NotConverged,
    TrainingCancelled,
    finished_result,
    train,
    train_criterion,
)

__all__ = [
    "CriterionResult",
    "EpochReport",
    "LicchaviState",
    "NotConverged",
    "TrainingCancelled",
    "finished_result",
    "train",
    "train_criterion",
]
