"""Training objectives: what :class:`~mmflow.training.FlowMatching` minimises, as a part of it.

An objective turns an encoded batch into a loss and the terms worth logging::

    output = objective(network, x1, cond, batch, generator, context)
    output.loss, output.terms          # logged as train/loss and train/<term>

``network`` is the trainable velocity network, called however the objective needs
(``network(x_t, t, **cond)``, with extra inputs such as ``step_size=`` or a second time);
``x1, cond`` are the adapter's encoding of ``batch``; ``generator`` is seeded from the run's
seed and the step in training, and from ``sample_seed`` and the batch in validation, so the
draws of a step are known again on resume and validation compares epochs on the same noise
(``None``, outside a trainer, draws from torch's global generator).

Per-example draws (noise, times, dropout, any per-row choice) go through the context's
:meth:`TrainingContext.per_example` (or its :meth:`~TrainingContext.noise_like`,
:meth:`~TrainingContext.sample_times`, :meth:`~TrainingContext.uniform`). Under data-parallel
training each of the ``W`` processes holds rows ``rank, rank + W, ...`` of the global batch
(:class:`mmflow.data.EpochShuffle`), and every process draws for the whole global batch and
keeps its own rows; so a row gets the same noise and time whatever the number of processes,
and ``W`` processes train exactly as one does on the same global batch.

``context`` (:class:`TrainingContext`) lends
what the module owns and writes once: the path, the time distribution, the loss, the
adapter's noise, its null condition and the condition dropout of classifier-free guidance
(applied where the objective calls :meth:`TrainingContext.drop_conditions`), and the EMA copy
of the network (the target network of bootstrap objectives).

:class:`FlowMatchingObjective` is the default. With ``noise_key`` its noise comes from the
batch instead of the adapter, so it trains on stored (noise, data) pairs (reflow). A recipe
names another objective like any part: ``model.objective.class_path: ...``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from mmflow.interpolants import AffinePath
from mmflow.losses import VelocityLoss
from mmflow.modality import Batch, Condition, ModalityAdapter, drop_conditions
from mmflow.timesteps import TimeDistribution

__all__ = ["FlowMatchingObjective", "ObjectiveOutput", "TrainingContext", "TrainingObjective"]


@dataclass
class ObjectiveOutput:
    """The loss to minimise and named scalar terms to log beside it."""

    loss: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainingContext:
    """What a :class:`~mmflow.training.FlowMatching` module lends its objective for one batch.

    Attributes:
        path: the interpolant ``x_t = alpha(t) x1 + sigma(t) x0``.
        time_distribution: the training distribution of ``t``.
        loss: the regression loss ``L(prediction, target, t, mask)``.
        adapter: the modality adapter (its noise and null condition).
        ema_network: the EMA copy of the network, or ``None`` without an EMA.
        cond_dropout: the probability of training a sample unconditionally (0 in validation).
        rank: this process's index among the data-parallel processes.
        world_size: the number of data-parallel processes (1 without data parallelism).
    """

    path: AffinePath
    time_distribution: TimeDistribution
    loss: VelocityLoss
    adapter: ModalityAdapter
    ema_network: nn.Module | None
    cond_dropout: float
    rank: int = 0
    world_size: int = 1

    def per_example(self, n: int, draw: Callable[[int], Tensor]) -> Tensor:
        """This process's ``n`` rows of ``draw(n * world_size)``, the draw for the global batch:
        rows ``rank, rank + world_size, ...``, as the process holds that batch's examples."""
        return draw(n * self.world_size)[self.rank :: self.world_size]

    def noise_like(self, x1: Tensor, generator: torch.Generator | None) -> Tensor:
        """Standard Gaussian noise of ``x1``'s shape, drawn per example."""
        shape = x1.shape[1:]
        return self.per_example(
            x1.shape[0],
            lambda m: self.adapter.noise_like(x1.new_empty((m, *shape)), generator=generator),
        )

    def source_like(self, x1: Tensor, cond: Condition, generator: torch.Generator | None) -> Tensor:
        """The adapter's source sample ``x0`` for ``x1`` under ``cond`` (:mod:`mmflow.sources`;
        standard Gaussian by default), its noise drawn per example."""
        return self.adapter.source.from_noise(self.noise_like(x1, generator), cond)

    def sample_times(
        self,
        n: int,
        generator: torch.Generator | None,
        device: torch.device | str,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """``n`` training times from the time distribution."""
        return self.per_example(
            n, lambda m: self.time_distribution.sample(m, generator, device=device, dtype=dtype)
        )

    def uniform(
        self,
        n: int,
        generator: torch.Generator | None,
        device: torch.device | str,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """``n`` draws of ``U[0, 1)``."""
        return self.per_example(
            n, lambda m: torch.rand(m, generator=generator, device=device, dtype=dtype)
        )

    def null_condition(self, cond: Condition) -> Condition:
        """The unconditional version of ``cond``."""
        return self.adapter.null_condition(cond)

    def drop_conditions(
        self, cond: Condition, x1: Tensor, generator: torch.Generator | None
    ) -> Condition:
        """Classifier-free guidance dropout: each sample's condition is replaced by the null
        condition with probability ``cond_dropout`` (one uniform draw per sample of ``x1``)."""
        if self.cond_dropout <= 0 or not self.adapter.conditioned():
            return cond
        draws = self.uniform(x1.shape[0], generator, x1.device)
        return drop_conditions(cond, self.null_condition(cond), draws < self.cond_dropout)


def noise_from_batch(batch: Batch, key: str, x1: Tensor) -> Tensor:
    """``batch[key]`` as the noise paired with ``x1``: same shape, on ``x1``'s device and dtype."""
    if key not in batch:
        raise KeyError(f"the objective reads its noise from `{key}`; the batch has {sorted(batch)}")
    noise = torch.as_tensor(batch[key])
    if noise.shape != x1.shape:
        raise ValueError(
            f"batch `{key}` has shape {tuple(noise.shape)}, but the encoded data has "
            f"{tuple(x1.shape)}: stored noise must be in the space the flow transports"
        )
    return noise.to(device=x1.device, dtype=x1.dtype)


class TrainingObjective(nn.Module):
    """Base class of training objectives (see the module docstring).

    Subclasses implement :meth:`forward`. An objective may hold frozen parts (a teacher, as a
    :class:`mmflow.pretrained.Frozen`); parameters it registers are not optimised.
    """

    def batch_keys(self) -> tuple[str, ...]:
        """The batch entries the objective reads beyond the encoded ``(x1, cond)``: by the
        convention of objectives on stored pairs, the ``noise_key`` attribute when set.

        Validation and test batches of real data lack them (a coupling is only defined for
        training pairs); the module then scores generated samples without a loss.
        """
        noise_key = getattr(self, "noise_key", None)
        return (noise_key,) if noise_key else ()

    def forward(
        self,
        network: nn.Module,
        x1: Tensor,
        cond: Condition,
        batch: Batch,
        generator: torch.Generator | None,
        context: TrainingContext,
    ) -> ObjectiveOutput:
        raise NotImplementedError


class FlowMatchingObjective(TrainingObjective):
    """Conditional flow matching: regress the path's velocity.

        x0 ~ the adapter's source (or batch[noise_key]),  t ~ time_distribution,  c' = dropout(c),
        x_t = alpha(t) x1 + sigma(t) x0,    target = alpha'(t) x1 + sigma'(t) x0,
        loss = L(network(x_t, t, **c'), target, t)

    masked by ``cond["x_mask"]`` for padded elements.

    Args:
        noise_key: read ``x0`` from this batch entry (stored pairs, as reflow trains on)
            instead of drawing it; it must have the shape of the encoded ``x1``.
    """

    def __init__(self, noise_key: str | None = None) -> None:
        super().__init__()
        self.noise_key = noise_key

    def forward(
        self,
        network: nn.Module,
        x1: Tensor,
        cond: Condition,
        batch: Batch,
        generator: torch.Generator | None,
        context: TrainingContext,
    ) -> ObjectiveOutput:
        if self.noise_key is None:
            x0 = context.source_like(x1, cond, generator)
        else:
            x0 = noise_from_batch(batch, self.noise_key, x1)
        t = context.sample_times(x1.shape[0], generator, x1.device, x1.dtype)
        cond = context.drop_conditions(cond, x1, generator)
        draw = context.path.sample(x0, x1, t)
        prediction = network(draw.x_t, draw.t, **cond)
        return ObjectiveOutput(
            context.loss(prediction, draw.target, draw.t, mask=cond.get("x_mask"))
        )

    def extra_repr(self) -> str:
        return f"noise_key={self.noise_key!r}" if self.noise_key else ""
