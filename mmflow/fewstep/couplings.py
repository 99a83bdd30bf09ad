"""Couplings: a teacher's (noise, sample, condition) triples on disk, and training on them.

Reflow, distillation and SlimFlow train on the pairing a trained flow defines: noise ``x0``
and the sample ``x1 = ODE_teacher(x0 | c)`` its sampler reaches from it under condition ``c``.
:func:`write_couplings` runs the teacher over many noises through Lightning's predict loop
and stores the triples in shards::

    <folder>/manifest.json               teacher, sampler, NFE, CFG, seed, shard size and count
    <folder>/shard-000000.safetensors    x0 [n, ...], x1 [n, ...], cond/<name> [n, ...]

The conditions are those of the modality's training data (shard ``i`` encodes training
examples ``i * shard_size ...`` with the teacher's adapter), so a coupling set follows the
data's condition distribution. Each shard's noise comes from its own seed (the run's seed and
the shard index), and a shard is written atomically when complete, so a run that is killed
and started again writes exactly the missing shards: no duplicate, none missing, and the same
triples an uninterrupted run writes. Asking a folder for more samples than it holds extends
it with the next shards. Shards split across processes two ways: Lightning's own
(``devices > 1``: the predict loop's distributed sampler deals the shards out) or independent
processes that each take the shards ``i`` with ``i % num_processes == process_index``.

:class:`CouplingDataModule` trains on a folder: its training batches are
``{"x0": noise, "x1": sample, "cond": {...}}``, already in the space the flow transports, which
:class:`~mmflow.training.FlowMatching` passes to its objective without encoding (the objective
reads the noise from ``x0``: ``FlowMatchingObjective(noise_key="x0")`` is reflow). Validation
and test batches come from the modality's own datamodule, so a model trained on couplings is
scored on real data like any other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from mmflow.data import ResumableLoader, batch_as_is
from mmflow.files import load_weights, read_json, save_weights, write_json
from mmflow.modality import Batch, Condition, condition_rows
from mmflow.numerics import first_non_finite, keyed_generator

__all__ = [
    "COUPLING_KEYS",
    "CouplingDataModule",
    "CouplingSettings",
    "Couplings",
    "coupling_parts",
    "write_couplings",
]

MANIFEST_NAME = "manifest.json"
COUPLING_KEYS = ("x0", "x1", "cond")
_COND_PREFIX = "cond/"


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.safetensors"


def coupling_parts(batch: Batch) -> tuple[Tensor, Condition] | None:
    """``(x1, cond)`` of a coupling batch (it holds exactly ``x0``, ``x1`` and ``cond``), else
    ``None``: a modality batch, to be encoded by the adapter."""
    if set(batch) != set(COUPLING_KEYS):
        return None
    return batch["x1"], batch["cond"]


@dataclass(frozen=True)
class CouplingSettings:
    """What defines a coupling set; a resumed run must have the same (``manifest.json``).

    Attributes:
        teacher: the teacher's checkpoint or pretrained folder, as given.
        sampler, nfe, cfg_scale: how the teacher integrates (``mmflow info``).
        seed: seeds every shard's noise, with the shard index.
        num_shards, shard_size: ``num_shards * shard_size`` triples.
        sample_shape: the shape of one ``x1`` (the flow's space).
    """

    teacher: str
    sampler: str
    nfe: int
    cfg_scale: float
    seed: int
    num_shards: int
    shard_size: int
    sample_shape: tuple[int, ...]

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> CouplingSettings:
        return cls(**{**value, "sample_shape": tuple(value["sample_shape"])})


def shard_generator(seed: int, index: int) -> torch.Generator:
    """The noise generator of shard ``index``: keyed on ``(seed, index)``, so shards never share
    a stream and a resumed run redraws the same noise."""
    return keyed_generator(seed, index)


def flatten_condition(cond: Condition, prefix: str = _COND_PREFIX) -> dict[str, Tensor]:
    """``{"context": {"text": t}}`` -> ``{"cond/context/text": t}``; only tensors are stored."""
    flat: dict[str, Tensor] = {}
    for name, value in cond.items():
        if isinstance(value, dict):
            flat.update(flatten_condition(value, f"{prefix}{name}/"))
        elif torch.is_tensor(value):
            flat[f"{prefix}{name}"] = value
        else:
            raise ValueError(
                f"condition `{prefix[len(_COND_PREFIX) :]}{name}` is a {type(value).__name__}: "
                "couplings store tensor conditions only"
            )
    return flat


def unflatten_condition(flat: dict[str, Tensor]) -> Condition:
    """The inverse of :func:`flatten_condition` on the ``cond/`` entries of a shard."""
    cond: Condition = {}
    for key, value in flat.items():
        *parents, name = key[len(_COND_PREFIX) :].split("/")
        node = cond
        for parent in parents:
            node = node.setdefault(parent, {})
        node[name] = value
    return cond


class _ShardJobs(Dataset[int]):
    """The indices of the shards still to write (one predict batch each)."""

    def __init__(self, indices: Sequence[int]) -> None:
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> int:
        return self.indices[position]


class CouplingGenerator(pl.LightningModule):
    """The predict-loop module: one predict step makes one shard's triples.

    ``flow`` is a :class:`mmflow.hub.PretrainedFlow` (``network``, ``adapter``, ``generate``);
    ``examples`` is the training split, a dataset whose ``__getitems__`` returns a dict batch.
    """

    def __init__(
        self, flow: Any, examples: Dataset[Any], settings: CouplingSettings, batch_size: int
    ) -> None:
        super().__init__()
        self.flow, self.examples, self.settings = flow, examples, settings
        self.batch_size = batch_size

    def predict_step(self, batch: list[int], batch_idx: int) -> dict[str, Tensor]:
        (index,) = batch
        settings = self.settings
        first = index * settings.shard_size
        rows = [(first + j) % len(self.examples) for j in range(settings.shard_size)]
        data = self.transfer_batch_to_device(
            self.examples.__getitems__(rows), self.device, dataloader_idx=0
        )
        x1_data, cond = self.flow.adapter.encode(data)
        noise = torch.randn(x1_data.shape, generator=shard_generator(settings.seed, index))
        noise = self.flow.adapter.source.from_noise(
            noise.to(device=self.device, dtype=x1_data.dtype), cond
        )
        samples = [
            self.flow.generate(
                condition_rows(cond, start, start + self.batch_size),
                noise[start : start + self.batch_size],
                sampler=settings.sampler,
                nfe=settings.nfe,
                cfg_scale=settings.cfg_scale,
            ).samples
            for start in range(0, settings.shard_size, self.batch_size)
        ]
        return {
            "index": torch.tensor(index),
            "x0": noise,
            "x1": torch.cat(samples),
            **flatten_condition(cond),
        }


class _ShardWriter(BasePredictionWriter):
    """Writes each predicted shard atomically as it completes (nothing is kept in memory)."""

    def __init__(self, folder: Path) -> None:
        super().__init__(write_interval="batch")
        self.folder = folder

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: dict[str, Tensor],
        batch_indices: Sequence[int] | None,
        batch: list[int],
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        index = int(prediction.pop("index"))
        save_weights(self.folder / shard_name(index), prediction)


def _check_manifest(folder: Path, settings: CouplingSettings) -> None:
    """Write the manifest of a new folder, or check a resumed run against it.

    A run that asks for more shards than the folder holds, with otherwise the same settings,
    extends the set: shard ``i`` depends only on the seed and ``i``, so the stored shards are
    exactly the first ones of the larger set. Fewer shards are refused.
    """
    path = folder / MANIFEST_NAME
    if not path.exists():
        write_json(path, asdict(settings))
        return
    stored = CouplingSettings.from_json(read_json(path, "mmflow couplings"))
    differing = [
        f"{name}: {getattr(stored, name)!r} there, {getattr(settings, name)!r} now"
        for name in asdict(settings)
        if getattr(stored, name) != getattr(settings, name)
    ]
    if len(differing) == 1 and stored.num_shards < settings.num_shards:
        write_json(path, asdict(settings))
    elif differing:
        raise ValueError(
            f"{path}: the folder holds couplings made with other settings ({'; '.join(differing)});"
            " write to a new folder"
        )


def write_couplings(
    flow: Any,
    teacher: str,
    examples: Dataset[Any],
    folder: str | Path,
    num_samples: int,
    shard_size: int = 500,
    batch_size: int = 250,
    sampler: str = "heun",
    nfe: int = 32,
    cfg_scale: float = 1.0,
    seed: int = 0,
    process_index: int = 0,
    num_processes: int = 1,
    trainer_kwargs: dict[str, Any] | None = None,
) -> list[int]:
    """Write the missing shards of a coupling set; returns the indices written now.

    Args:
        flow: the teacher, a :class:`mmflow.hub.PretrainedFlow`.
        teacher: its checkpoint or folder, recorded in the manifest.
        examples: the training split (``__getitems__`` returns a dict batch) whose conditions
            the couplings take.
        folder: where the manifest and shards go; an existing folder is resumed.
        num_samples: triples in all, a multiple of ``shard_size``.
        shard_size: triples per shard (one predict step).
        batch_size: teacher batch within a shard.
        sampler, nfe, cfg_scale: the teacher's integration.
        seed: seeds each shard's noise with the shard index.
        process_index, num_processes: this process writes the shards ``i`` with
            ``i % num_processes == process_index``.
        trainer_kwargs: extra ``pl.Trainer`` arguments (``accelerator``, ``devices``, ...).
    """
    if shard_size < 1 or batch_size < 1:
        raise ValueError(
            f"`shard_size` and `batch_size` must be >= 1, got {shard_size}, {batch_size}"
        )
    if num_samples < shard_size or num_samples % shard_size:
        raise ValueError(
            f"`num_samples` ({num_samples}) must be a positive multiple of `shard_size` ({shard_size})"
        )
    if not 0 <= process_index < num_processes:
        raise ValueError(
            f"`process_index` must be in [0, num_processes={num_processes}), got {process_index}"
        )
    if not hasattr(examples, "__getitems__") or len(examples) == 0:
        raise ValueError(
            "`examples` must be a non-empty dataset with `__getitems__` (a dict batch)"
        )
    folder = Path(folder)
    probe, _ = flow.adapter.encode(examples.__getitems__([0]))
    settings = CouplingSettings(
        teacher=str(teacher),
        sampler=sampler,
        nfe=nfe,
        cfg_scale=float(cfg_scale),
        seed=seed,
        num_shards=num_samples // shard_size,
        shard_size=shard_size,
        sample_shape=tuple(probe.shape[1:]),
    )
    _check_manifest(folder, settings)
    todo = [
        i
        for i in range(settings.num_shards)
        if i % num_processes == process_index and not (folder / shard_name(i)).exists()
    ]
    if not todo:
        return []
    trainer = pl.Trainer(
        **{
            "accelerator": "cpu",
            "devices": 1,
            "logger": False,
            "enable_checkpointing": False,
            "enable_model_summary": False,
            **(trainer_kwargs or {}),
        },
        callbacks=[_ShardWriter(folder)],
    )
    generator = CouplingGenerator(flow, examples, settings, batch_size)
    jobs = DataLoader(_ShardJobs(todo), batch_size=1, collate_fn=list)
    trainer.predict(generator, jobs, return_predictions=False)
    return todo


class Couplings(Dataset[Batch]):
    """A complete coupling folder in memory, served as coupling batches.

    Every shard the manifest counts must be there, with the manifest's shapes and finite
    values; errors name the folder or the shard.
    """

    def __init__(self, folder: str | Path, limit: int | None = None) -> None:
        self.folder = Path(folder)
        self.settings = CouplingSettings.from_json(
            read_json(self.folder / MANIFEST_NAME, "mmflow couplings")
        )
        missing = [
            i for i in range(self.settings.num_shards) if not (self.folder / shard_name(i)).exists()
        ]
        if missing:
            raise ValueError(
                f"{self.folder}: {len(missing)} of {self.settings.num_shards} shards missing "
                f"(first: {shard_name(missing[0])}); run `mmflow couplings` again to finish it"
            )
        shards = [self._load(i) for i in range(self.settings.num_shards)]
        self.tensors = {k: torch.cat([s[k] for s in shards]) for k in shards[0]}
        if limit is not None:
            self.tensors = {k: v[:limit] for k, v in self.tensors.items()}

    def _load(self, index: int) -> dict[str, Tensor]:
        path = self.folder / shard_name(index)
        tensors = load_weights(path)
        size, shape = self.settings.shard_size, self.settings.sample_shape
        for key in ("x0", "x1"):
            if key not in tensors or tuple(tensors[key].shape) != (size, *shape):
                found = tuple(tensors[key].shape) if key in tensors else "nothing"
                raise ValueError(f"{path}: `{key}` should be {(size, *shape)}, found {found}")
        bad = first_non_finite(tensors)
        if bad is not None:
            raise ValueError(f"{path}: `{bad}` holds non-finite values")
        return tensors

    def __len__(self) -> int:
        return len(self.tensors["x0"])

    def __getitems__(self, indices: list[int]) -> Batch:
        rows = torch.as_tensor(indices)
        picked = {k: v[rows] for k, v in self.tensors.items()}
        cond = unflatten_condition({k: v for k, v in picked.items() if k.startswith(_COND_PREFIX)})
        return {"x0": picked["x0"], "x1": picked["x1"], "cond": cond}


class CouplingDataModule(pl.LightningDataModule):
    """Trains on a coupling folder; validates and tests on the modality's own data.

    Args:
        couplings: the folder written by ``mmflow couplings``.
        data: the modality's datamodule (validation, test and predict batches).
        batch_size: coupling triples per training batch.
        limit: use only the first ``limit`` triples.
        num_workers: training dataloader workers.
    """

    def __init__(
        self,
        couplings: str,
        data: pl.LightningDataModule,
        batch_size: int = 64,
        limit: int | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.couplings, self.data = couplings, data
        self.batch_size, self.limit, self.num_workers = batch_size, limit, num_workers
        self._train: Couplings | None = None

    def prepare_data(self) -> None:
        self.data.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self._train is None:
            self._train = Couplings(self.couplings, self.limit)
        self.data.setup(stage)

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        return ResumableLoader(
            self._train, self.batch_size, self.num_workers, batch_as_is, trainer=self.trainer
        )

    def val_dataloader(self) -> Any:
        return self.data.val_dataloader()

    def test_dataloader(self) -> Any:
        return self.data.test_dataloader()

    def predict_dataloader(self) -> Any:
        return self.data.predict_dataloader()
