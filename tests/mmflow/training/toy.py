"""A toy modality with a closed-form answer: class-conditional Gaussians in 2-D."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics import Metric

from mmflow.data import ResumableLoader
from mmflow.interpolants import LinearPath
from mmflow.losses import VelocityLoss
from mmflow.modality import ModalityAdapter
from mmflow.timesteps import Uniform
from mmflow.training.objectives import TrainingContext

CLASS_MEANS = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.5]])
CLASS_STD = 0.3


class ToyData(pl.LightningDataModule):
    """``x | y ~ N(CLASS_MEANS[y], CLASS_STD^2 I)`` with a fixed seed."""

    def __init__(self, size: int = 2048, batch_size: int = 128, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, len(CLASS_MEANS), (size,), generator=generator)
        self.points = CLASS_MEANS[self.labels] + CLASS_STD * torch.randn(
            size, 2, generator=generator
        )
        self.batch_size = batch_size

    def _loader(self, shuffle: bool) -> DataLoader:
        dataset = TensorDataset(self.points, self.labels)
        if shuffle:
            return ResumableLoader(
                dataset, self.batch_size, collate_fn=_as_dict, trainer=self.trainer
            )
        return DataLoader(dataset, batch_size=self.batch_size, collate_fn=_as_dict)

    def train_dataloader(self) -> DataLoader:
        return self._loader(shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(shuffle=False)


def _as_dict(rows: list[tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
    points, labels = zip(*rows)
    return {"point": torch.stack(points), "label": torch.stack(labels)}


class MeanError(Metric):
    """Distance between the mean of generated points per class and the true class mean."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("sums", torch.zeros(len(CLASS_MEANS), 2), dist_reduce_fx="sum")
        self.add_state("counts", torch.zeros(len(CLASS_MEANS)), dist_reduce_fx="sum")

    def update(self, generated: Tensor, batch: dict[str, Tensor]) -> None:
        self.sums.index_add_(0, batch["label"], generated)
        self.counts.index_add_(
            0, batch["label"], torch.ones_like(batch["label"], dtype=torch.float)
        )

    def compute(self) -> Tensor:
        means = self.sums / self.counts.clamp_min(1)[:, None]
        return (means - CLASS_MEANS.to(means)).norm(dim=1).max()


class PerClassCount(Metric):
    """Returns a dict (one entry per class), as per-class audio metrics do."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("counts", torch.zeros(len(CLASS_MEANS)), dist_reduce_fx="sum")

    def update(self, generated: Tensor, batch: dict[str, Tensor]) -> None:
        self.counts.index_add_(
            0, batch["label"], torch.ones_like(batch["label"], dtype=torch.float)
        )

    def compute(self) -> dict[str, Tensor]:
        return {f"count/{k}": c for k, c in enumerate(self.counts)}


class ToyAdapter(ModalityAdapter):
    """Points are the data; the label (null class = number of classes) is the condition."""

    def __init__(self, num_classes: int = len(CLASS_MEANS)) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.saved: list[str] = []

    def encode(self, batch):
        return batch["point"], {"class_labels": batch["label"]}

    def decode(self, x1, cond, batch=None):
        return x1

    def sample_conditions(self, num_samples):
        return (num_samples, 2), {"class_labels": torch.arange(num_samples) % self.num_classes}

    def null_condition(self, cond):
        return {**cond, "class_labels": torch.full_like(cond["class_labels"], self.num_classes)}

    def evaluators(self):
        return nn.ModuleDict({"mean_error": MeanError(), "per_class": PerClassCount()})

    def save_media(self, media, directory, name, batch=None):
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{name}.pt"
        torch.save(media.cpu(), path)
        self.saved.append(str(path))
        return [path]


class ToyVelocity(nn.Module):
    """A small MLP velocity network with a class embedding (index num_classes = null)."""

    def __init__(self, num_classes: int = len(CLASS_MEANS), width: int = 128) -> None:
        super().__init__()
        self.embed = nn.Embedding(num_classes + 1, width)
        self.inp = nn.Linear(3, width)
        self.body = nn.Sequential(
            nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, 2)
        )

    def forward(self, x: Tensor, t: Tensor, class_labels: Tensor) -> Tensor:
        h = self.inp(torch.cat([x, t[:, None].to(x.dtype)], dim=1)) + self.embed(class_labels)
        return self.body(h)


class FaultyVelocity(ToyVelocity):
    """:class:`ToyVelocity` whose output turns NaN from its ``nan_from``-th training call on,
    as a diverging run's would (with ``nan_rank``, only in that data-parallel process)."""

    def __init__(self, nan_from: int, width: int = 32, nan_rank: int | None = None) -> None:
        super().__init__(width=width)
        self.nan_from, self.nan_rank, self.calls = nan_from, nan_rank, 0

    def forward(self, x: Tensor, t: Tensor, class_labels: Tensor) -> Tensor:
        velocity = super().forward(x, t, class_labels)
        if self.training:
            self.calls += 1
            faulty_rank = self.nan_rank is None or self.nan_rank == _rank()
            if self.calls >= self.nan_from and faulty_rank:
                return velocity * float("nan")
        return velocity


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


class SetAdapter(ToyAdapter):
    """The toy points as a set of one token each, ``[B, 1, 2]``, for an MMDiT."""

    def encode(self, batch):
        return batch["point"][:, None], {"class_labels": batch["label"]}

    def decode(self, x1, cond, batch=None):
        return x1[:, 0]


class Unconditional(ModalityAdapter):
    """Standard Gaussian noise, no condition."""

    def null_condition(self, cond):
        return cond

    def conditioned(self) -> bool:
        return False


def toy_context(
    adapter: ModalityAdapter | None = None, cond_dropout: float = 0.0
) -> TrainingContext:
    """What a module lends an objective: the linear path, uniform times, the MSE, no EMA."""
    return TrainingContext(
        LinearPath(), Uniform(), VelocityLoss(), adapter or ModalityAdapter(), None, cond_dropout
    )


@contextmanager
def one_thread() -> Iterator[None]:
    """Tiny networks train faster on one thread than on two contended cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def fit_one_batch(module: nn.Module, batch: dict, steps: int = 30, lr: float = 1e-3) -> list[float]:
    """Train a ``FlowMatching`` module's network on one batch (encoded once) with AdamW and
    return the loss of every step: the smoke test that an adapter trains through the core."""
    optimizer = torch.optim.AdamW(module.network.parameters(), lr=lr)
    module.train()
    x1, cond = module.adapter.encode(batch)
    losses = []
    for _ in range(steps):
        loss = module.objective_output(x1, cond, batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses
