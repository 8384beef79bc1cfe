"""Licchavi: federated local/global scoring of pairwise comparisons (v1 objective, two solvers)."""

from ml.licchavi.state import LicchaviState
from ml.licchavi.trainer import (
    CriterionResult,
    EpochReport,
    TrainingCancelled,
    finished_result,
    train,
    train_criterion,
)

__all__ = [
    "CriterionResult",
    "EpochReport",
    "LicchaviState",
    "TrainingCancelled",
    "finished_result",
    "train",
    "train_criterion",
]
