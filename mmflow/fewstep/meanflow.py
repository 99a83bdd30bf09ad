"""MeanFlow (Geng et al. 2025, arXiv 2505.13447): train the average velocity with one JVP.

Our time: ``t = 0`` is noise, ``t = 1`` is data, ``x_t = t x1 + (1 - t) x0``, ``v = x1 - x0``.
A few-step network predicts the average velocity over a step of size ``h``,

    u(x_t, t, h) = (1 / h) int_t^{t+h} v(x_s, s) ds,     so  x_{t+h} = x_t + h u(x_t, t, h),

called as ``network(x_t, t, step_size=h, **cond)`` and sampled with ``step_euler``.

**The MeanFlow identity in our time.** Hold the end point ``tau = t + h`` fixed and move ``t``
along the flow (``dx_t/dt = v(x_t, t)``). With ``H(t) = int_t^tau v(x_s, s) ds``:

    H(t) = (tau - t) u(x_t, t, tau - t),
    dH/dt = -v(x_t, t)                                   (fundamental theorem of calculus),
    dH/dt = -u + (tau - t) du/dt                         (product rule),

so ``-v = -u + h du/dt``, that is

    u(x_t, t, h) = v(x_t, t) + h du/dt,
    du/dt = v . d_x u + d_t u - d_h u                    (dh/dt = -1 while tau is fixed).

``du/dt`` is one Jacobian-vector product of the network with tangents ``(v, 1, -1)`` for
``(x, t, h)``, the conditions held fixed. The training target and loss are

    u_tgt = v + h sg(du/dt),
    Delta = u_theta(x_t, t, h) - u_tgt,
    loss  = mean_b  w_b ||Delta_b||^2,      w_b = sg(1 / (||Delta_b||^2 + c)^p),

with ``||.||^2`` summed over a sample's (unmasked) elements, as in the paper. ``v`` in the
target and the tangent is the conditional velocity ``x1 - x0``; since ``u_tgt`` is affine in
``v`` for a fixed network, its conditional expectation given ``x_t`` is the target built
from the marginal velocity, whose fixed point is the true average velocity. At ``h = 0`` the
target is ``v``: those samples are plain flow matching.

**The paper's convention** is the opposite: ``z_t = (1 - t) x + t e`` (t = 0 data, t = 1
noise), ``v = e - x``, ``u(z_t, r, t)`` over ``[r, t]`` with ``r <= t``, identity
``u = v - (t - r)(v . d_z u + d_t u)`` from one JVP with tangents ``(v, 0, 1)`` for
``(z, r, t)``, one-step sample ``x = e - u(e, 0, 1)``. :func:`from_meanflow_convention` is
the one place where it is converted: the same point ``x = z``, our time ``1 - t``, step
``h = t - r``, end point ``tau = 1 - r`` (so the paper's fixed ``r`` is our fixed ``tau``)
and ``u_ours = -u_paper``.

**Times.** ``(t, tau)`` are two independent draws of a time distribution, sorted
(``t = min``, ``tau = max``, ``h = tau - t``); a share of the batch has ``h = 0``. The paper's
logit-normal over its noise level, ``sigmoid(P_mean + P_std n)``, is ours with
``loc = -P_mean``.

**Guidance in the target.** With classifier-free guidance folded into training, the velocity
that builds the target (and the JVP tangent) is

    v_g = omega v + kappa u_theta(x_t, t, 0 | c) + (1 - omega - kappa) u_theta(x_t, t, 0 | null),

the network's own instantaneous predictions taken without gradients; ``omega = 1``,
``kappa = 0`` is no guidance, and the effective guidance scale is ``omega / (1 - kappa)``.
Guidance acts for ``t`` inside ``guidance_interval`` (``v_g = v`` outside). Samples whose
condition is dropped (probability: the module's ``cond_dropout``; 0.1 in the official code)
train on the null condition with ``v_g = v``, so the model learns the unguided unconditional velocity too. A model
trained this way is sampled with ``cfg_scale = 1``.

**Attention and dropout.** Fused SDPA kernels (flash, memory-efficient, and the CPU flash
kernel) have no forward-mode derivative, so the JVP runs under the math kernel
(``sdpa_kernel(SDPBackend.MATH)``); networks without SDPA are unaffected. Autocast is off
during the JVP, as in the official code. Prediction and tangent come from one
``torch.func.jvp`` call, a single forward pass, so dropout draws one mask for both and the
JVP is the derivative of the same (masked) network; computing the prediction and the JVP in
two calls would need the random state replayed. ``torch.func.jvp`` does not accept a
``DistributedDataParallel`` wrapper.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from mmflow.losses import velocity_mse
from mmflow.modality import Batch, Condition, drop_conditions
from mmflow.timesteps import LogitNormal, TimeDistribution
from mmflow.training.objectives import ObjectiveOutput, TrainingContext, TrainingObjective

__all__ = [
    "AverageVelocityPoint",
    "MeanFlowObjective",
    "adaptive_weight",
    "from_meanflow_convention",
    "meanflow_target",
]

AverageVelocityFn = Callable[[Tensor, Tensor, Tensor], Tensor]


class AverageVelocityPoint(NamedTuple):
    """An average velocity in our convention: ``x_{t+h} = x + h * average_velocity``."""

    x: Tensor
    t: Tensor
    step_size: Tensor
    average_velocity: Tensor


def from_meanflow_convention(
    z: Tensor, r: Tensor, t: Tensor, average_velocity: Tensor
) -> AverageVelocityPoint:
    """The paper's ``(z_t, r, t, u(z_t, r, t))`` in our convention.

    The paper has ``z_t = (1 - t) x + t e`` and ``z_r = z_t - (t - r) u``; ours has
    ``x_s = s x1 + (1 - s) x0``. The same point is ``x = z`` at our time ``1 - t``, its step
    towards the data is ``h = t - r`` (ending at our ``1 - r``), and since our time runs the
    other way, ``x_{1-r} = x + h (-u)``: the average velocity changes sign.

    Args:
        z: the paper's state ``z_t``.
        r, t: the paper's times, ``[B]``, ``r <= t``.
        average_velocity: the paper's ``u(z_t, r, t)``.
    """
    return AverageVelocityPoint(x=z, t=1 - t, step_size=t - r, average_velocity=-average_velocity)


def _per_sample(value: Tensor, like: Tensor) -> Tensor:
    """A ``[B]`` tensor shaped to broadcast against ``like``."""
    return value.reshape(-1, *([1] * (like.ndim - 1)))


def meanflow_target(
    average_velocity_fn: AverageVelocityFn,
    x: Tensor,
    t: Tensor,
    step_size: Tensor,
    velocity: Tensor,
) -> tuple[Tensor, Tensor]:
    """The prediction ``u(x, t, h)`` and the MeanFlow target ``v + h sg(du/dt)``.

    ``du/dt = v . d_x u + d_t u - d_h u`` is the derivative along the flow with the end point
    ``t + h`` held fixed, computed by one ``torch.func.jvp`` with tangents ``(v, 1, -1)``.
    The prediction keeps its autograd graph; the target is detached.

    Args:
        average_velocity_fn: ``u(x, t, h)`` with ``t`` and ``h`` of shape ``[B]``.
        x: the state ``x_t``.
        t, step_size: ``[B]`` times and step sizes.
        velocity: ``v``, the velocity along which ``x`` moves (tangent and target).
    """
    ones = torch.ones_like(t)
    prediction, derivative = torch.func.jvp(
        average_velocity_fn, (x, t, step_size), (velocity, ones, -torch.ones_like(step_size))
    )
    target = velocity + _per_sample(step_size, velocity) * derivative
    return prediction, target.detach()


def adaptive_weight(squared_norm: Tensor, power: float, offset: float) -> Tensor:
    """``sg(1 / (||Delta||^2 + c)^p)`` per sample (``p = 0``: plain squared error;
    ``p = 1/2``: a pseudo-Huber-like loss; ``p = 1``: close to a log loss)."""
    return (squared_norm.detach() + offset).pow(-power)


def _check_unit_interval(name: str, value: float, closed_above: bool = True) -> None:
    above = value <= 1 if closed_above else value < 1
    if not (math.isfinite(value) and 0 <= value and above):
        bound = "[0, 1]" if closed_above else "[0, 1)"
        raise ValueError(f"`{name}` must be in {bound}, got {value}")


class MeanFlowObjective(TrainingObjective):
    """MeanFlow training of the average velocity ``network(x_t, t, step_size=h, **cond)``.

            x0 ~ noise,  (t, tau) = sort(two draws of time_distribution),  h = tau - t
            (h = 0 for a share ``flow_matching_share`` of the batch),
            x_t = t x1 + (1 - t) x0,   v = x1 - x0,   v_g = guided v (see the module docstring),
            u, du/dt = jvp(network, (x_t, t, h), (v_g, 1, -1)),
            u_tgt = v_g + h sg(du/dt),
            loss = mean_b sg(1 / (||u_b - u_tgt_b||^2 + c)^p) ||u_b - u_tgt_b||^2.

        Defaults are the official JAX code's (``Gsunshine/meanflow``, ``configs/default.py``, the
        paper's ImageNet setting), converted to our time. The official CIFAR-10 PyTorch code
        (``Gsunshine/py-meanflow``) uses ``flow_matching_share = 0.25``, ``weight_power = 0.75``,
        ``weight_offset = 1e-3`` and both times ``LogitNormal(-2.0, 2.0)`` (its v0 script; that code
    already runs in our convention, ``z = t x + (1 - t) e``), and feeds its network the raw
    ``t`` and ``h`` in [0, 1] (:class:`~mmflow.nn.MMDiT`: ``time_scale = step_size_scale = 1``).

        The module's ``path`` and ``loss`` are not used: the interpolant is the linear path the
        identity is derived for, and the loss is the adaptively weighted squared norm, whose
        offset ``c`` is relative to the norm summed over a sample (the module's loss averages
        over elements and weights by ``t``, which has no single meaning for a pair of times).

        Args:
            flow_matching_share: probability that a sample has ``h = 0`` (``r = t`` in the paper;
                0.75 in the JAX code, "ratio of r != t" 25% in the paper).
            time_distribution: the distribution of both times; default
                ``LogitNormal(loc=0.4, scale=1.0)``, the paper's ``P_mean = -0.4``, ``P_std = 1.0``.
            weight_power: ``p`` of the adaptive weight (1.0 in the JAX code).
            weight_offset: ``c`` of the adaptive weight (0.01 in the JAX code).
            cfg_omega: ``omega``, the weight of the conditional velocity in ``v_g`` (1.0 in the
                JAX code).
            cfg_kappa: ``kappa``, the weight of the model's conditional prediction in ``v_g``
                (0.5 in the JAX code; 0 here, so that the default trains without guidance).
            guidance_interval: ``(low, high)``: guidance acts for ``low <= t <= high`` in our
                time (the paper's ``[t_start, t_end]`` is ours ``[1 - t_end, 1 - t_start]``).
    """

    def __init__(
        self,
        flow_matching_share: float = 0.75,
        time_distribution: TimeDistribution | None = None,
        weight_power: float = 1.0,
        weight_offset: float = 0.01,
        cfg_omega: float = 1.0,
        cfg_kappa: float = 0.0,
        guidance_interval: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        super().__init__()
        _check_unit_interval("flow_matching_share", flow_matching_share)
        if not (math.isfinite(weight_power) and weight_power >= 0):
            raise ValueError(f"`weight_power` must be >= 0, got {weight_power}")
        if not (math.isfinite(weight_offset) and weight_offset > 0):
            raise ValueError(f"`weight_offset` must be > 0, got {weight_offset}")
        if not (math.isfinite(cfg_omega) and cfg_omega > 0):
            raise ValueError(f"`cfg_omega` must be > 0, got {cfg_omega}")
        _check_unit_interval("cfg_kappa", cfg_kappa, closed_above=False)
        low, high = guidance_interval
        if not 0 <= low <= high <= 1:
            raise ValueError(
                f"`guidance_interval` must be (low, high) with 0 <= low <= high <= 1, "
                f"got {guidance_interval}"
            )
        self.flow_matching_share = float(flow_matching_share)
        self.time_distribution = time_distribution or LogitNormal(loc=0.4, scale=1.0)
        self.weight_power = float(weight_power)
        self.weight_offset = float(weight_offset)
        self.cfg_omega = float(cfg_omega)
        self.cfg_kappa = float(cfg_kappa)
        self.guidance_interval = (float(low), float(high))

    @property
    def guided(self) -> bool:
        """Whether the target carries classifier-free guidance (``omega != 1`` or ``kappa``)."""
        return self.cfg_omega != 1.0 or self.cfg_kappa != 0.0

    def sample_times(
        self,
        batch_size: int,
        generator: torch.Generator | None,
        device: torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> tuple[Tensor, Tensor]:
        """``(t, h)``, both ``[B]``: sorted pairs of draws, ``h = 0`` for the flow-matching share."""
        first, second = (
            self.time_distribution.sample(batch_size, generator, device, torch.float64)
            for _ in range(2)
        )
        start, end = torch.minimum(first, second), torch.maximum(first, second)
        draws = torch.rand(batch_size, generator=generator, device=device, dtype=torch.float64)
        end = torch.where(draws < self.flow_matching_share, start, end)
        return start.to(dtype), (end - start).to(dtype)

    def forward(
        self,
        network: nn.Module,
        x1: Tensor,
        cond: Condition,
        batch: Batch,
        generator: torch.Generator | None,
        context: TrainingContext,
    ) -> ObjectiveOutput:
        x0 = context.source_like(x1, cond, generator)
        t, step_size = context.per_example(
            x1.shape[0],
            lambda m: torch.stack(self.sample_times(m, generator, x1.device, x1.dtype), dim=1),
        ).unbind(1)
        dropped = self._dropped(x1, generator, context)
        x_t = _per_sample(t, x1) * x1 + (1 - _per_sample(t, x1)) * x0
        velocity = x1 - x0
        guided = self.guided_velocity(network, x_t, t, velocity, cond, dropped, context)
        if dropped is not None:
            cond = drop_conditions(cond, context.null_condition(cond), dropped)

        def average_velocity(x: Tensor, time: Tensor, step: Tensor) -> Tensor:
            return network(x, time, step_size=step, **cond)

        with (
            torch.autocast(x1.device.type, enabled=False),
            sdpa_kernel(SDPBackend.MATH),
        ):
            prediction, target = meanflow_target(average_velocity, x_t, t, step_size, guided)
        return self._output(prediction, target, velocity, cond.get("x_mask"))

    def _dropped(
        self, x1: Tensor, generator: torch.Generator | None, context: TrainingContext
    ) -> Tensor | None:
        """Which samples train on the null condition (the draw of
        :meth:`TrainingContext.drop_conditions`, kept because guidance needs the mask)."""
        if context.cond_dropout <= 0 or not context.adapter.conditioned():
            return None
        return context.uniform(x1.shape[0], generator, x1.device) < context.cond_dropout

    def guided_velocity(
        self,
        network: nn.Module,
        x_t: Tensor,
        t: Tensor,
        velocity: Tensor,
        cond: Condition,
        dropped: Tensor | None,
        context: TrainingContext,
    ) -> Tensor:
        """The velocity that builds the target:

            v_g = omega v + kappa u(x_t, t, 0 | c) + (1 - omega - kappa) u(x_t, t, 0 | null)

        for samples inside the guidance interval whose condition is kept, ``v`` for the rest
        (``dropped`` marks the samples trained on the null condition). The network's own
        predictions are taken without gradients, in its current train / eval mode.
        """
        if not self.guided:
            return velocity
        if not context.adapter.conditioned():
            raise ValueError(
                "`cfg_omega` / `cfg_kappa` guide the target with the null condition, but the "
                "adapter is unconditional: train with cfg_omega = 1 and cfg_kappa = 0"
            )
        instantaneous = torch.zeros_like(t)
        null = context.null_condition(cond)
        with torch.no_grad():
            unconditional = network(x_t, t, step_size=instantaneous, **null)
            guided = self.cfg_omega * velocity
            guided = guided + (1 - self.cfg_omega - self.cfg_kappa) * unconditional
            if self.cfg_kappa != 0:
                guided = guided + self.cfg_kappa * network(x_t, t, step_size=instantaneous, **cond)
        low, high = self.guidance_interval
        use_guidance = (t >= low) & (t <= high)
        if dropped is not None:
            use_guidance = use_guidance & ~dropped
        return torch.where(_per_sample(use_guidance, velocity), guided, velocity)

    def _output(
        self, prediction: Tensor, target: Tensor, velocity: Tensor, mask: Tensor | None
    ) -> ObjectiveOutput:
        """The adaptively weighted loss, and the unweighted per-element errors as terms."""
        squared_norm = _summed_squares(prediction - target, mask)
        weight = adaptive_weight(squared_norm, self.weight_power, self.weight_offset)
        terms = {
            "mse": velocity_mse(prediction.detach(), target, mask=mask),
            "velocity_mse": velocity_mse(prediction.detach(), velocity, mask=mask),
        }
        return ObjectiveOutput((weight * squared_norm).mean(), terms)

    def extra_repr(self) -> str:
        return (
            f"flow_matching_share={self.flow_matching_share}, "
            f"time_distribution={self.time_distribution!r}, weight_power={self.weight_power}, "
            f"weight_offset={self.weight_offset}, cfg_omega={self.cfg_omega}, "
            f"cfg_kappa={self.cfg_kappa}, guidance_interval={self.guidance_interval}"
        )


def _summed_squares(difference: Tensor, mask: Tensor | None) -> Tensor:
    """``||Delta_b||^2`` over each sample's real elements, ``[B]``; ``mask`` covers the leading
    dimensions of ``difference`` (``[B, L]`` for tokens ``[B, L, C]``)."""
    squares = difference.square()
    if mask is not None:
        mask = mask.to(squares.dtype)
        squares = squares * mask.reshape(*mask.shape, *([1] * (squares.ndim - mask.ndim)))
    return squares.reshape(difference.shape[0], -1).sum(1)
