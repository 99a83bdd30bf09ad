"""Training: the one LightningModule every modality trains with."""

from mmflow.training.module import FlowMatching

__all__ = ["FlowMatching"]
