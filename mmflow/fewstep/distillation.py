"""k-step distillation on couplings (Liu et al. 2023, "Flow Straight and Fast", sec. 2.3).

A coupling is a teacher's noise ``x0`` and the sample ``x1 = ODE_teacher(x0)`` its sampler
reaches. Distillation regresses the straight line between them, but only at the times a
k-step sampler visits, the uniform grid ``t in {0, 1/k, ..., (k - 1)/k}``:

    x_t = t x1 + (1 - t) x0,      target = x1 - x0,      loss = D(u_theta(x_t, t), target).

Every Euler step of a model that fits the target exactly follows the coupling's line, so
``k`` Euler steps from ``x0`` land on ``x1``: the network learns the k-step map, not the
instantaneous velocity (which needs many steps wherever the teacher's paths curve). With
``step_size_input`` the network is also given ``step_size = 1/k`` and is sampled with
``step_euler``; without it, with ``euler`` on ``k`` uniform steps.

The distance ``D`` (:class:`DistillationLoss`) is a regression of the velocity (``"mse"``,
``"pseudo_huber"``) or a feature distance between the one-step data estimates,

    x1_hat = x_t + (1 - t) u_theta(x_t, t),      D = |phi(x1_hat) - phi(x1)|^2 + w |u - target|^2,

with ``phi`` a frozen network (LPIPS in the papers; here any feature extractor, e.g. the
modality's classifier). Rectified flow's code calls the two variants ``lpips`` (``w = 0``) and
``lpips+l2`` (``w = 1``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from mmflow.files import load_state, load_weights
from mmflow.losses import pseudo_huber, velocity_mse
from mmflow.modality import Batch, Condition
from mmflow.pretrained import WEIGHTS_NAME, Frozen
from mmflow.training.objectives import (
    ObjectiveOutput,
    TrainingContext,
    TrainingObjective,
    noise_from_batch,
)

__all__ = [
    "DISTILLATION_LOSSES",
    "DistillationLoss",
    "FeatureDistance",
    "StepDistillationObjective",
    "load_feature_weights",
]

DistillationLossKind = Literal["mse", "pseudo_huber", "feature"]
DISTILLATION_LOSSES: tuple[str, ...] = ("mse", "pseudo_huber", "feature")


def load_feature_weights(network: nn.Module, weights: str | Path) -> nn.Module:
    """Load ``weights`` into ``network`` (strictly) and return it: a pretrained part's folder
    (its ``model.safetensors``, :mod:`mmflow.pretrained`) or a ``.safetensors`` file.

    In YAML the network is built from its ``class_path`` and ``init_args`` (those of the
    folder's ``config.json``) and its weights are read from here.
    """
    path = Path(weights)
    file = path / WEIGHTS_NAME if path.is_dir() else path
    if not file.is_file():
        raise ValueError(f"`feature_weights`: no weights at {file}")
    load_state(network, load_weights(file), file)
    return network


class FeatureDistance(nn.Module):
    """Per-sample squared feature distance under a frozen network ``phi``:

        d(a, b) = mean_j (phi(s a + c)_j - phi(s b + c)_j)^2,

    ``[B]``, with the input map ``s x + c`` taking the flow's space to the network's (images
    in [-1, 1] to a classifier's [0, 1]: ``s = c = 0.5``). ``phi`` is the network's ``features``
    method when it has one (the project's classifiers), else its ``forward``. The network is
    held :class:`~mmflow.pretrained.Frozen`: gradients reach ``a`` and ``b`` only.
    """

    def __init__(
        self, network: nn.Module, input_scale: float = 1.0, input_shift: float = 0.0
    ) -> None:
        super().__init__()
        self.network = Frozen(network)
        self.input_scale = float(input_scale)
        self.input_shift = float(input_shift)

    def features(self, x: Tensor) -> Tensor:
        """``phi(s x + c)`` flattened to ``[B, F]``."""
        inputs = self.input_scale * x + self.input_shift
        extract = getattr(self.network.part, "features", self.network.part)
        return extract(inputs).flatten(1)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return (self.features(a) - self.features(b)).square().mean(1)


class DistillationLoss(nn.Module):
    """The distance ``D(u, target)`` between a predicted and a target velocity at ``(x_t, t)``.

    - ``"mse"``: :func:`mmflow.losses.velocity_mse` of ``u`` and ``target``;
    - ``"pseudo_huber"``: :func:`mmflow.losses.pseudo_huber` (``c = huber_c`` or its default);
    - ``"feature"``: ``mean_i d(x_t + (1 - t) u, x_t + (1 - t) target) + l2_weight * mse``
      with ``d`` a :class:`FeatureDistance` (on couplings ``x_t + (1 - t) target = x1``).

    Masks (``cond["x_mask"]``) weight the regressions; the feature distance sees whole samples.

    Args:
        kind: one of :data:`DISTILLATION_LOSSES`.
        huber_c: the pseudo-Huber ``c`` (``None``: ``0.00054 sqrt(d)``).
        feature_network: the frozen ``phi`` (in YAML: its ``class_path`` and ``init_args``).
        feature_weights: weights loaded into ``feature_network`` (:func:`load_feature_weights`):
            a pretrained part's folder or a ``.safetensors`` file; ``None`` keeps its weights.
        feature_input_scale, feature_input_shift: ``s`` and ``c`` of :class:`FeatureDistance`.
        l2_weight: weight ``w`` of the velocity MSE added to the feature distance.
    """

    def __init__(
        self,
        kind: DistillationLossKind = "mse",
        huber_c: float | None = None,
        feature_network: nn.Module | None = None,
        feature_weights: str | None = None,
        feature_input_scale: float = 1.0,
        feature_input_shift: float = 0.0,
        l2_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if kind not in DISTILLATION_LOSSES:
            raise ValueError(f"`loss` must be one of {DISTILLATION_LOSSES}, got {kind!r}")
        if huber_c is not None and huber_c <= 0:
            raise ValueError(f"`huber_c` must be > 0, got {huber_c}")
        if l2_weight < 0:
            raise ValueError(f"`l2_weight` must be >= 0, got {l2_weight}")
        if kind != "feature" and (feature_network is not None or feature_weights is not None):
            raise ValueError(
                f"`feature_network` and `feature_weights` are for the feature loss, not {kind!r}"
            )
        self.kind = kind
        self.huber_c = huber_c
        self.l2_weight = float(l2_weight)
        self.feature_distance: FeatureDistance | None = None
        if kind == "feature":
            self.feature_distance = _feature_distance(
                feature_network, feature_weights, feature_input_scale, feature_input_shift
            )

    def forward(
        self, u: Tensor, target: Tensor, x_t: Tensor, t: Tensor, mask: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss and its parts (``feature`` and ``l2`` for the feature loss)."""
        if self.kind == "mse":
            return velocity_mse(u, target, mask=mask), {}
        if self.kind == "pseudo_huber":
            return pseudo_huber(u, target, c=self.huber_c, mask=mask), {}
        remaining = (1 - t).to(u.dtype).reshape(-1, *([1] * (u.ndim - 1)))
        estimate, reference = x_t + remaining * u, x_t + remaining * target
        feature = self.feature_distance(estimate, reference).mean()
        l2 = velocity_mse(u, target, mask=mask)
        terms = {"feature": feature.detach(), "l2": l2.detach()}
        return feature + self.l2_weight * l2, terms

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, huber_c={self.huber_c!r}, l2_weight={self.l2_weight}"


def _feature_distance(
    network: nn.Module | None, weights: str | None, scale: float, shift: float
) -> FeatureDistance:
    if network is None:
        raise ValueError("`feature_network` is required by the feature loss")
    if weights is not None:
        network = load_feature_weights(network, weights)
    return FeatureDistance(network, scale, shift)


class StepDistillationObjective(TrainingObjective):
    """Distillation to ``steps`` Euler steps on couplings (module docstring):

        i ~ U{0, ..., k - 1},   t = i / k,   c' = dropout(c),
        x_t = t x1 + (1 - t) x0,   loss = D(network(x_t, t, **c' [, step_size = 1/k]), x1 - x0)

    with ``x0 = batch[noise_key]`` the teacher's noise and ``x1`` its sample. The path is the
    straight line whatever the module's ``path``, and the module's time distribution and loss
    are not used. Sample the result with ``euler`` and ``nfe = steps`` (uniform grid) or, with
    ``step_size_input``, with ``step_euler``.

    Args:
        steps: ``k``, the sampling steps to distill to (Liu et al. use 1, 2, 4).
        step_size_input: pass ``step_size = 1/k`` to the network (shortcut-style networks).
        noise_key: the batch entry holding the teacher's noise.
        loss, huber_c, feature_network, feature_weights, feature_input_scale,
        feature_input_shift, l2_weight: the distance ``D`` (:class:`DistillationLoss`).
    """

    def __init__(
        self,
        steps: int = 1,
        step_size_input: bool = False,
        noise_key: str = "x0",
        loss: DistillationLossKind = "mse",
        huber_c: float | None = None,
        feature_network: nn.Module | None = None,
        feature_weights: str | None = None,
        feature_input_scale: float = 1.0,
        feature_input_shift: float = 0.0,
        l2_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"`steps` must be an integer >= 1, got {steps!r}")
        if not noise_key:
            raise ValueError("`noise_key` must name the batch entry of the teacher's noise")
        self.steps = steps
        self.step_size_input = bool(step_size_input)
        self.noise_key = noise_key
        self.distance = DistillationLoss(
            loss,
            huber_c,
            feature_network,
            feature_weights,
            feature_input_scale,
            feature_input_shift,
            l2_weight,
        )

    def grid_times(
        self, batch_size: int, generator: torch.Generator | None, like: Tensor
    ) -> Tensor:
        """``t = i / k`` with ``i`` uniform on ``{0, ..., k - 1}``, shape ``[batch_size]``."""
        index = torch.randint(0, self.steps, (batch_size,), generator=generator, device=like.device)
        return index.to(like.dtype) / self.steps

    def forward(
        self,
        network: nn.Module,
        x1: Tensor,
        cond: Condition,
        batch: Batch,
        generator: torch.Generator | None,
        context: TrainingContext,
    ) -> ObjectiveOutput:
        x0 = noise_from_batch(batch, self.noise_key, x1)
        t = context.per_example(x1.shape[0], lambda m: self.grid_times(m, generator, x1))
        cond = context.drop_conditions(cond, x1, generator)
        x_t = straight_line(x0, x1, t)
        target = x1 - x0
        inputs = dict(cond)
        if self.step_size_input:
            inputs["step_size"] = torch.full_like(t, 1.0 / self.steps)
        u = network(x_t, t, **inputs)
        loss, terms = self.distance(u, target, x_t, t, mask=cond.get("x_mask"))
        return ObjectiveOutput(loss, terms)

    def extra_repr(self) -> str:
        return (
            f"steps={self.steps}, step_size_input={self.step_size_input}, "
            f"noise_key={self.noise_key!r}"
        )


def straight_line(x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
    """``x_t = t x1 + (1 - t) x0`` for ``t`` of shape ``[B]``."""
    t = t.to(x1.dtype).reshape(-1, *([1] * (x1.ndim - 1)))
    return t * x1 + (1 - t) * x0
