"""Training: the one LightningModule every modality trains with, its objectives and loops."""

from mmflow.training.checkpoints import (
    AtomicCheckpointIO,
    ExactResume,
    RunCheckpoint,
    install_safeguards,
)
from mmflow.training.evaluation import EvaluatedBatch, EvaluatedModule
from mmflow.training.guards import NonFiniteGuard
from mmflow.training.module import FlowMatching, built_from_config, optimization
from mmflow.training.objectives import (
    FlowMatchingObjective,
    ObjectiveOutput,
    TrainingContext,
    TrainingObjective,
)

__all__ = [
    "AtomicCheckpointIO",
    "EvaluatedBatch",
    "EvaluatedModule",
    "ExactResume",
    "FlowMatching",
    "FlowMatchingObjective",
    "NonFiniteGuard",
    "ObjectiveOutput",
    "RunCheckpoint",
    "TrainingContext",
    "TrainingObjective",
    "built_from_config",
    "install_safeguards",
    "optimization",
]
