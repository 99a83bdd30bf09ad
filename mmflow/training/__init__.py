"""Training: the one LightningModule every modality trains with, its objectives and loops."""

from mmflow.training.evaluation import EvaluatedBatch, EvaluatedModule
from mmflow.training.module import FlowMatching
from mmflow.training.objectives import (
    FlowMatchingObjective,
    ObjectiveOutput,
    TrainingContext,
    TrainingObjective,
)

__all__ = [
    "EvaluatedBatch",
    "EvaluatedModule",
    "FlowMatching",
    "FlowMatchingObjective",
    "ObjectiveOutput",
    "TrainingContext",
    "TrainingObjective",
]
