"""SlimFlow (Zhu, Liu & Liu 2024, arXiv 2407.12718): a small one-step student from a large flow.

Two stages, both trained on a large teacher's couplings ``(x0, x1 = ODE_teacher(x0))``:

**Annealing reflow** (:class:`AnnealingReflowObjective`) trains a (smaller) student from
scratch by reflow on noise that starts independent of the data and ends as the teacher's:

    z' = sqrt(1 - beta^2) z + beta eps,     eps ~ noise,    z = batch[noise_key],

then flow matching on ``(z', x1)``. ``beta`` goes from 1 (random pairs: plain flow matching)
to 0 (the teacher's pairs: reflow) over ``warmup_steps`` training steps, by
:func:`annealing_randomness`. For independent unit-variance ``z`` and ``eps``, ``z'`` has unit
variance for every ``beta``.

**Flow-guided distillation** (:class:`FlowGuidedDistillationObjective`) distills the student
(initialised from the annealed 2-rectified flow) to one step, regularised by the frozen
2-rectified flow ``v_T`` on fresh noise ``z``:

    L_distill = D(u(x0, 0), x1 - x0),
    x_{t'} = z + t' sg[u(z, 0)],    t' ~ U[0.2, 0.8],
    L_guide = D(u(z, 0), x_{t'} + (1 - t') v_T(x_{t'}, t') - z),
    loss = distillation_weight L_distill + guidance_weight L_guide,

i.e. the student's one-step direction is pulled towards the two-step estimate that starts with
its own step to ``t'`` and finishes with the teacher's Euler step (``teacher_loss_new`` of the
authors' ``reflow/reflow.py``, both terms with weight 1 and the same distance there).

The paired random horizontal flip of the code (the same flip of ``x0`` and ``x1``) is
image-specific and is left to the data. Time: ``t = 0`` noise, ``t = 1`` data.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from mmflow.fewstep.distillation import DistillationLoss, DistillationLossKind
from mmflow.hub import velocity_network
from mmflow.modality import Batch, Condition
from mmflow.pretrained import Frozen
from mmflow.training.objectives import (
    ObjectiveOutput,
    TrainingContext,
    TrainingObjective,
    noise_from_batch,
)

__all__ = [
    "ANNEALING_SCHEDULES",
    "AnnealingReflowObjective",
    "FlowGuidedDistillationObjective",
    "annealed_noise",
    "annealing_randomness",
]

AnnealingSchedule = Literal["linear", "cosine", "exp"]
ANNEALING_SCHEDULES: tuple[str, ...] = ("linear", "cosine", "exp")


def annealing_randomness(step: int, warmup_steps: int, schedule: AnnealingSchedule) -> float:
    """``beta`` after ``step`` training steps (``r = min(1, step / warmup_steps)``):

    - ``"linear"``: ``beta = 1 - r``;
    - ``"cosine"``: ``beta = (1 + cos(pi r)) / 2``;
    - ``"exp"``: ``beta = exp(-step / warmup_steps)``, which keeps decaying past the warm-up
      (``beta = e^-1`` at its end), as in the authors' code.

    ``warmup_steps = 0`` gives ``beta = 0`` (plain reflow).
    """
    if schedule not in ANNEALING_SCHEDULES:
        raise ValueError(f"`schedule` must be one of {ANNEALING_SCHEDULES}, got {schedule!r}")
    if warmup_steps == 0:
        return 0.0
    if schedule == "exp":
        return math.exp(-step / warmup_steps)
    progress = min(1.0, step / warmup_steps)
    if schedule == "cosine":
        return (1 + math.cos(math.pi * progress)) / 2
    return 1 - progress


def annealed_noise(pair_noise: Tensor, fresh_noise: Tensor, beta: float) -> Tensor:
    """``z' = sqrt(1 - beta^2) z + beta eps``: unit variance for independent unit-variance
    ``z`` and ``eps``, and ``z`` itself at ``beta = 0``."""
    if beta == 0:
        return pair_noise
    return math.sqrt(1 - beta**2) * pair_noise + beta * fresh_noise


class AnnealingReflowObjective(TrainingObjective):
    """Reflow on annealed couplings (module docstring):

        beta = annealing_randomness(n, warmup_steps, schedule),
        z' = sqrt(1 - beta^2) batch[noise_key] + beta eps,     t ~ time_distribution,
        x_t = alpha(t) x1 + sigma(t) z',   loss = L(network(x_t, t, **c'), alpha' x1 + sigma' z')

    with the module's path, time distribution and loss (reflow: the linear path and, as in
    RF++, :class:`~mmflow.timesteps.UShaped` times and a pseudo-Huber loss, if wanted).

    The step ``n`` is the objective's own count of training calls, the buffer
    ``training_calls``: it advances on every call in training mode (a validation call, in
    evaluation mode, uses the current ``beta`` and leaves it), and it
    is saved in the module's checkpoint, so a resumed run continues the schedule. With gradient
    accumulation it counts batches, not optimizer steps. ``beta`` is logged as ``randomness``.

    Args:
        warmup_steps: training steps over which ``beta`` anneals (SlimFlow: 300k on CIFAR-10).
        schedule: one of :data:`ANNEALING_SCHEDULES`.
        noise_key: the batch entry holding the teacher's noise.
    """

    def __init__(
        self,
        warmup_steps: int,
        schedule: AnnealingSchedule = "linear",
        noise_key: str = "x0",
    ) -> None:
        super().__init__()
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"`warmup_steps` must be an integer >= 0, got {warmup_steps!r}")
        if schedule not in ANNEALING_SCHEDULES:
            raise ValueError(f"`schedule` must be one of {ANNEALING_SCHEDULES}, got {schedule!r}")
        if not noise_key:
            raise ValueError("`noise_key` must name the batch entry of the teacher's noise")
        self.warmup_steps = warmup_steps
        self.schedule = schedule
        self.noise_key = noise_key
        self.register_buffer("training_calls", torch.zeros((), dtype=torch.long))

    def randomness(self) -> float:
        """``beta`` at the current count of training calls."""
        return annealing_randomness(int(self.training_calls), self.warmup_steps, self.schedule)

    def forward(
        self,
        network: nn.Module,
        x1: Tensor,
        cond: Condition,
        batch: Batch,
        generator: torch.Generator | None,
        context: TrainingContext,
    ) -> ObjectiveOutput:
        pair_noise = noise_from_batch(batch, self.noise_key, x1)
        beta = self.randomness()
        if self.training:
            self.training_calls += 1
        x0 = annealed_noise(pair_noise, context.noise_like(x1, generator), beta)
        t = context.sample_times(x1.shape[0], generator, x1.device, x1.dtype)
        cond = context.drop_conditions(cond, x1, generator)
        draw = context.path.sample(x0, x1, t)
        prediction = network(draw.x_t, draw.t, **cond)
        loss = context.loss(prediction, draw.target, draw.t, mask=cond.get("x_mask"))
        return ObjectiveOutput(loss, {"randomness": torch.tensor(beta, device=x1.device)})

    def extra_repr(self) -> str:
        return (
            f"warmup_steps={self.warmup_steps}, schedule={self.schedule!r}, "
            f"noise_key={self.noise_key!r}"
        )


class FlowGuidedDistillationObjective(TrainingObjective):
    """One-step distillation on couplings plus the flow-guided term of a frozen 2-rectified
    flow (module docstring); ``D`` is a :class:`~mmflow.fewstep.distillation.DistillationLoss`
    (LPIPS in the paper; L2, pseudo-Huber or a frozen network's features here).

    Both student calls use the condition after dropout, and the teacher sees the same
    condition; ``z`` is the adapter's noise. Terms ``distillation`` and ``guidance`` are logged.
    Sample the student with ``euler`` and ``nfe = 1``.

    Args:
        teacher: the 2-rectified flow's velocity network, or the path of its checkpoint or
            pretrained folder (:func:`mmflow.hub.velocity_network`); held frozen.
        noise_key: the batch entry holding the teacher's noise.
        distillation_weight, guidance_weight: weights of the two terms (1 and 1 in the code).
        guide_time_range: ``(low, high)`` of the uniform ``t'`` (``(0.2, 0.8)`` in the code).
        loss, huber_c, feature_network, feature_weights, feature_input_scale,
        feature_input_shift, l2_weight: the distance ``D``, shared by both terms.
    """

    def __init__(
        self,
        teacher: nn.Module | str,
        noise_key: str = "x0",
        distillation_weight: float = 1.0,
        guidance_weight: float = 1.0,
        guide_time_range: tuple[float, float] = (0.2, 0.8),
        loss: DistillationLossKind = "mse",
        huber_c: float | None = None,
        feature_network: nn.Module | None = None,
        feature_weights: str | None = None,
        feature_input_scale: float = 1.0,
        feature_input_shift: float = 0.0,
        l2_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if not noise_key:
            raise ValueError("`noise_key` must name the batch entry of the teacher's noise")
        if distillation_weight < 0 or guidance_weight < 0:
            raise ValueError(
                "`distillation_weight` and `guidance_weight` must be >= 0, got "
                f"{distillation_weight} and {guidance_weight}"
            )
        low, high = (float(v) for v in guide_time_range)
        if not 0.0 <= low <= high < 1.0:
            raise ValueError(
                f"`guide_time_range` must satisfy 0 <= low <= high < 1, got {guide_time_range}"
            )
        self.teacher = Frozen(velocity_network(teacher, "teacher"))
        self.noise_key = noise_key
        self.distillation_weight = float(distillation_weight)
        self.guidance_weight = float(guidance_weight)
        self.guide_time_range = (low, high)
        self.distance = DistillationLoss(
            loss,
            huber_c,
            feature_network,
            feature_weights,
            feature_input_scale,
            feature_input_shift,
            l2_weight,
        )

    def guide_target(
        self, z: Tensor, student_velocity: Tensor, t_guide: Tensor, cond: Condition
    ) -> Tensor:
        """``x_{t'} + (1 - t') v_T(x_{t'}, t') - z`` with ``x_{t'} = z + t' u(z, 0)``, without
        gradients (``t'`` of shape ``[B]``)."""
        with torch.no_grad():
            t = t_guide.to(z.dtype).reshape(-1, *([1] * (z.ndim - 1)))
            x_guide = z + t * student_velocity.detach()
            teacher_velocity = self.teacher(x_guide, t_guide.to(z.dtype), **cond)
            return x_guide + (1 - t) * teacher_velocity - z

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
        cond = context.drop_conditions(cond, x1, generator)
        mask = cond.get("x_mask")
        start = torch.zeros(x1.shape[0], device=x1.device, dtype=x1.dtype)
        distill, distill_terms = self.distance(
            network(x0, start, **cond), x1 - x0, x0, start, mask=mask
        )
        z = context.noise_like(x1, generator)
        u_z = network(z, start, **cond)
        low, high = self.guide_time_range
        t_guide = low + (high - low) * context.uniform(x1.shape[0], generator, x1.device, x1.dtype)
        guide, _ = self.distance(u_z, self.guide_target(z, u_z, t_guide, cond), z, start, mask)
        loss = self.distillation_weight * distill + self.guidance_weight * guide
        terms = {"distillation": distill.detach(), "guidance": guide.detach(), **distill_terms}
        return ObjectiveOutput(loss, terms)

    def extra_repr(self) -> str:
        return (
            f"noise_key={self.noise_key!r}, distillation_weight={self.distillation_weight}, "
            f"guidance_weight={self.guidance_weight}, guide_time_range={self.guide_time_range}"
        )
