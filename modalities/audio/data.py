"""Mixture datamodules for language-queried audio separation (FlowSep's recipe).

A batch is a dict::

    {"mixture": float [B, T], "target": float [B, T], "interferer": float [B, T],
     "class_index": long [B], "caption": list[str], "snr_db": float [B]}

Every clip of a split is the target of one mixture per epoch. Its interferer is a clip of a
**different group** (a different class; for a folder without classes, a different file), and
the pair is mixed at an SNR drawn uniformly from ``snr_range`` (default [-15, 15] dB; FlowSep
draws integers, we draw reals) by :func:`mix_at_snr`.

- Training mixtures are drawn on the fly, from a generator seeded by ``seed`` and the
  DataLoader worker's seed, so each worker and each epoch sees new pairs.
- Validation and test mixtures are **fixed**: interferers, SNRs and captions are drawn once
  from ``(seed, split)`` when the split is set up, so two setups give identical batches.

The caption is the text query. ``""`` is the null (unconditional) query for classifier-free
guidance; the datamodules produce it only through ``caption_dropout`` (default 0), which
replaces a training caption with ``""`` with that probability.

:class:`LASSMixtures` mixes the real recordings prepared by :mod:`.sources` and queries them
with class caption templates (:mod:`.captions`); :class:`CaptionedWavFolder` mixes any folder
of audio files described by an AudioCaps-style CSV, so a real LASS corpus drops in.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, get_worker_info

from mmflow.data import SPLITS, SplitDataModule
from mmflow.files import default_cache_dir
from mmflow.numerics import keyed_seed

from .captions import NULL_CAPTION, draw_captions
from .io import fit_length, load_audio
from .sources import ALL_CLASSES, SourceSettings, prepare_sources, sources_cache_dir

log = logging.getLogger(__name__)

__all__ = [
    "CaptionedWavFolder",
    "ClipSet",
    "LASSMixtures",
    "MixtureDataModule",
    "MixtureDataset",
    "mix_at_snr",
]

MIX_PEAK = 0.9
SILENCE_POWER = 1e-10


def mix_at_snr(
    target: Tensor,
    interferer: Tensor,
    snr_db: Tensor,
    peak: float = MIX_PEAK,
    silence_power: float = SILENCE_POWER,
) -> dict[str, Tensor]:
    """Mix ``target`` and ``interferer`` (``[B, T]``) at ``snr_db`` (``[B]``), FlowSep-style.

    With powers ``P = mean(x^2)`` the interferer is scaled by

        g = sqrt(P_target / (P_interf * 10^(snr/10)))   so that   10 log10(P_target / P(g i)) = snr,

    and ``mixture = target + g * interferer``. If ``max|mixture| > 1``, mixture, target and
    scaled interferer are multiplied by ``peak / max|mixture|`` together (peak 0.9), which keeps
    the SNR and ``mixture = target + interferer`` exact.

    Silent inputs (power below ``silence_power``) are not divided by: a silent target leaves
    the interferer unscaled (``g = 1``) and reports ``snr_db = -inf``; a silent interferer gets
    ``g = 0`` and ``snr_db = +inf``. Returns ``mixture``, ``target``, ``interferer`` (scaled)
    and ``snr_db`` (the SNR actually realised).
    """
    target_power = target.square().mean(dim=-1)
    interferer_power = interferer.square().mean(dim=-1)
    target_silent = target_power < silence_power
    interferer_silent = interferer_power < silence_power
    wanted = interferer_power.clamp_min(silence_power) * torch.pow(10.0, snr_db / 10)
    gain = torch.sqrt(target_power / wanted)
    gain = torch.where(target_silent, torch.ones_like(gain), gain)
    gain = torch.where(interferer_silent & ~target_silent, torch.zeros_like(gain), gain)
    scaled = interferer * gain.unsqueeze(-1)
    mixture = target + scaled
    loudest = mixture.abs().amax(dim=-1)
    rescale = torch.where(loudest > 1, peak / loudest.clamp_min(1e-12), torch.ones_like(loudest))
    realised = torch.where(target_silent, torch.full_like(snr_db, -math.inf), snr_db)
    realised = torch.where(interferer_silent & ~target_silent, math.inf, realised)
    factor = rescale.unsqueeze(-1)
    return {
        "mixture": mixture * factor,
        "target": target * factor,
        "interferer": scaled * factor,
        "snr_db": realised,
    }


@dataclass
class ClipSet:
    """The clips of one split.

    Attributes:
        clips: float ``[N, T]`` waveforms.
        groups: long ``[N]``; an interferer is always drawn from another group.
        class_index: long ``[N]`` (``-1`` where the source has no classes).
        captions: one fixed caption per clip, or ``None`` to draw class caption templates.
    """

    clips: Tensor
    groups: Tensor
    class_index: Tensor
    captions: list[str] | None = None


class MixtureDataset(Dataset):
    """Mixtures of a :class:`ClipSet`: item ``i`` has clip ``i`` as target.

    ``fixed=True`` draws interferers, SNRs and captions once from ``seed`` (validation, test);
    ``fixed=False`` draws them per batch (training). ``__getitems__`` builds a whole batch with
    tensor ops (gathers, one :func:`mix_at_snr`), so the DataLoader passes it through as is.
    """

    def __init__(
        self,
        clip_set: ClipSet,
        split: str,
        class_names: tuple[str, ...],
        snr_range: tuple[float, float] = (-15.0, 15.0),
        seed: int = 0,
        fixed: bool = False,
        held_out_phrasings: bool = True,
        caption_dropout: float = 0.0,
    ) -> None:
        self.clip_set, self.split, self.class_names = clip_set, split, class_names
        self.snr_range, self.seed, self.held_out_phrasings = snr_range, seed, held_out_phrasings
        self.caption_dropout = caption_dropout
        self._index_other_groups(clip_set.groups)
        self._generator: torch.Generator | None = None
        self._generator_owner: tuple[int, int] | None = None
        self.fixed_draws: dict[str, Any] | None = None
        if fixed:
            everything = torch.arange(len(self))
            generator = torch.Generator().manual_seed(seed * 1000 + SPLITS.index(split) + 1)
            self.fixed_draws = self._draw(everything, generator)

    def _index_other_groups(self, groups: Tensor) -> None:
        """Clips sorted by group, and each group's start/count in that order."""
        if len(groups) == 0:
            raise ValueError(f"the {self.split} split holds no clips")
        self.by_group = torch.argsort(groups, stable=True)
        unique, counts = torch.unique(groups, return_counts=True)
        if len(unique) < 2:
            raise ValueError(
                f"the {self.split} split has clips of one class only; mixtures need an "
                "interferer of a different class"
            )
        starts = torch.cumsum(counts, 0) - counts
        position = torch.searchsorted(unique, groups)
        self.group_start, self.group_count = starts[position], counts[position]

    def __len__(self) -> int:
        return len(self.clip_set.groups)

    def _draw(self, targets: Tensor, generator: torch.Generator) -> dict[str, Any]:
        """Interferer, SNR and caption for each target, uniform over clips of other groups.

        ``r ~ U{0, N - n_g - 1}`` indexes the clips sorted by group with the target's group
        (``[start_g, start_g + n_g)``) cut out: ``r`` at or past ``start_g`` shifts by ``n_g``.
        """
        others = len(self) - self.group_count[targets]
        pick = (torch.rand(targets.shape, generator=generator) * others).long()
        start = self.group_start[targets]
        pick = torch.where(pick >= start, pick + self.group_count[targets], pick)
        low, high = self.snr_range
        snr_db = low + (high - low) * torch.rand(targets.shape, generator=generator)
        return {
            "interferer": self.by_group[pick],
            "snr_db": snr_db,
            "caption": self._captions(targets, generator),
        }

    def _captions(self, targets: Tensor, generator: torch.Generator) -> list[str]:
        if self.clip_set.captions is not None:
            captions = [self.clip_set.captions[i] for i in targets.tolist()]
        else:
            captions = draw_captions(
                self.clip_set.class_index[targets],
                self.class_names,
                self.split,
                generator,
                self.held_out_phrasings,
            )
        if self.caption_dropout > 0:
            dropped = torch.rand(targets.shape, generator=generator) < self.caption_dropout
            captions = [NULL_CAPTION if d else c for c, d in zip(captions, dropped.tolist())]
        return captions

    def _process_generator(self) -> torch.Generator:
        """A generator per process: seeded by ``seed``, the worker's torch seed and the
        data-parallel rank.

        In a DataLoader worker ``torch.initial_seed()`` is the loader's per-epoch base seed plus
        the worker id, so workers and epochs draw different mixtures; the rank keeps the
        processes of a data-parallel run from drawing the same ones.
        """
        info = get_worker_info()
        owner = (os.getpid(), info.id if info is not None else -1)
        if self._generator is None or self._generator_owner != owner:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
            seed = keyed_seed(self.seed, torch.initial_seed(), rank)
            self._generator = torch.Generator().manual_seed(seed)
            self._generator_owner = owner
        return self._generator

    def __getitems__(self, indices: list[int]) -> dict[str, Any]:
        targets = torch.as_tensor(indices, dtype=torch.long)
        if self.fixed_draws is not None:
            draws = {
                "interferer": self.fixed_draws["interferer"][targets],
                "snr_db": self.fixed_draws["snr_db"][targets],
                "caption": [self.fixed_draws["caption"][i] for i in indices],
            }
        else:
            draws = self._draw(targets, self._process_generator())
        clips = self.clip_set.clips
        mixed = mix_at_snr(clips[targets], clips[draws["interferer"]], draws["snr_db"])
        return {
            **mixed,
            "class_index": self.clip_set.class_index[targets],
            "caption": draws["caption"],
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        """One mixture (unbatched tensors), for inspection; loaders use ``__getitems__``."""
        batch = self.__getitems__([index])
        return {k: v[0] for k, v in batch.items()}


class MixtureDataModule(SplitDataModule):
    """Shared mixing, splitting and loaders of the audio datamodules.

    Subclasses implement :meth:`load_clip_sets` (the clips of each split) and set
    ``class_names``.

    Args:
        clip_seconds: clip length in seconds (``round(clip_seconds * sample_rate)`` samples).
        sample_rate: sample rate of every waveform.
        batch_size: mixtures per batch.
        snr_range: ``(low, high)`` dB; SNRs are drawn uniformly in it.
        held_out_phrasings: query validation/test mixtures only with caption phrasings never
            seen in training (template captions only).
        caption_dropout: probability that a training caption becomes ``""`` (the null query).
        kwargs: the other loader and split settings of :class:`mmflow.data.SplitDataModule`
            (``num_workers``, ``seed`` — which also fixes the validation and test mixtures —,
            ``val_fraction``, ``test_fraction``: fractions of the source recordings).
    """

    class_names: tuple[str, ...] = ()

    def __init__(
        self,
        clip_seconds: float = 2.56,
        sample_rate: int = 16000,
        batch_size: int = 16,
        snr_range: tuple[float, float] = (-15.0, 15.0),
        held_out_phrasings: bool = True,
        caption_dropout: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, **kwargs)
        if snr_range[0] > snr_range[1]:
            raise ValueError(f"snr_range {snr_range} must be (low, high) with low <= high")
        if not 0 <= caption_dropout <= 1:
            raise ValueError(f"caption_dropout must be in [0, 1], got {caption_dropout}")
        self.clip_seconds, self.sample_rate = clip_seconds, sample_rate
        self.clip_samples = round(clip_seconds * sample_rate)
        self.snr_range = (float(snr_range[0]), float(snr_range[1]))
        self.held_out_phrasings, self.caption_dropout = held_out_phrasings, caption_dropout

    def load_clip_sets(self) -> dict[str, ClipSet]:
        """The clips of ``train``, ``val`` and ``test``."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        """Load the clips and fix the validation/test mixtures (once)."""
        if self.datasets:
            return
        for split, clip_set in self.load_clip_sets().items():
            self.datasets[split] = MixtureDataset(
                clip_set,
                split,
                self.class_names,
                self.snr_range,
                self.seed,
                fixed=split != "train",
                held_out_phrasings=self.held_out_phrasings,
                caption_dropout=self.caption_dropout if split == "train" else 0.0,
            )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def val_dataloader(self) -> DataLoader:
        """The validation mixtures in one fixed, seeded order.

        Clips are stored class by class; a fixed shuffle makes the first batches (all that
        ``limit_val_batches`` looks at during training) a sample of every class.
        """
        self.setup()
        order = torch.randperm(
            len(self.datasets["val"]), generator=torch.Generator().manual_seed(0)
        )
        return self._loader("val", shuffle=False, order=order.tolist())


class LASSMixtures(MixtureDataModule):
    """Mixtures of the real recordings and sampled-instrument renders of :mod:`.sources`.

    ``prepare_data`` builds (once) the clip cache ``<cache_dir>/audio/lass-<hash>/`` with its
    manifest; ``setup`` loads the clips of each split into memory (about 1700 clips, 280 MB
    float32 at the defaults). Captions are class templates: training phrasings for training,
    held-out phrasings for validation/test when ``held_out_phrasings``.

    Args:
        cache_dir: cache root; ``None`` means ``$MMFLOW_CACHE`` or ``~/.cache/mmflow``.
        classes: which classes to use (default: all of :data:`.sources.ALL_CLASSES`).
        max_clips_per_class: cap on the clips of one class (all splits together).
        renders_per_program: MIDI pieces rendered per GM program of an instrument class.
        render_seconds: length of each MIDI piece.
        rms_threshold: clips with a lower RMS are dropped as near-silent.
        (others: see :class:`MixtureDataModule`)
    """

    def __init__(
        self,
        cache_dir: str | None = None,
        classes: list[str] | None = None,
        max_clips_per_class: int = 400,
        renders_per_program: int = 8,
        render_seconds: float = 10.24,
        rms_threshold: float = 1e-3,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.class_names = tuple(classes) if classes is not None else ALL_CLASSES
        self.settings = SourceSettings(
            self.class_names,
            self.sample_rate,
            self.clip_samples,
            max_clips_per_class,
            self.seed,
            self.val_fraction,
            self.test_fraction,
            rms_threshold,
            renders_per_program,
            render_seconds,
        )
        self._manifest: dict[str, Any] | None = None

    def prepare_data(self) -> None:
        """Prepare the clip cache (a no-op when an up-to-date one exists)."""
        self._manifest = prepare_sources(self.settings, self.cache_root)

    def manifest(self) -> dict[str, Any]:
        """The cache manifest (preparing the cache first if needed)."""
        if self._manifest is None:
            self.prepare_data()
        return self._manifest

    @property
    def clips_dir(self) -> Path:
        """The prepared cache folder holding ``manifest.json`` and ``clips/``."""
        return sources_cache_dir(self.cache_root, self.settings)

    def load_clip_sets(self) -> dict[str, ClipSet]:
        manifest = self.manifest()
        class_of = {name: index for index, name in enumerate(self.class_names)}
        sets = {}
        for split in SPLITS:
            entries = [clip for clip in manifest["clips"] if clip["split"] == split]
            clips = torch.stack(
                [load_audio(self.clips_dir / c["file"], self.sample_rate) for c in entries]
            )
            labels = torch.tensor([class_of[c["class"]] for c in entries], dtype=torch.long)
            sets[split] = ClipSet(fit_length(clips, self.clip_samples), labels, labels)
        return sets


class CaptionedWavFolder(MixtureDataModule):
    """Mixtures of any folder of audio files described by an AudioCaps-style CSV.

    The CSV has a header with columns ``file`` (path relative to ``root``) and ``caption``, and
    optionally ``class`` and ``split`` (``train``/``val``/``test``). Each row is one target with
    its own caption (AudioCaps lists several captions per file: one row each). Each file is
    read once (WAV/OGG/FLAC, downmixed, resampled) and its **first** ``clip_seconds`` are used,
    zero-padded when shorter.

    Interferers come from a different ``class`` when the column exists, else from a different
    file; ``class_index`` is ``-1`` without a class column. Without a ``split`` column, files
    are split with the seeded ``val_fraction``/``test_fraction`` (all rows of a file together).
    Mixtures use the CSV captions; validation/test ones are fixed as for :class:`LASSMixtures`.

    Raises (in ``setup``): ``ValueError`` naming the CSV for a missing column, and naming the
    CSV row for an empty caption or a bad split; ``FileNotFoundError`` naming the row for a
    missing file.

    Args:
        root: folder the ``file`` paths are relative to.
        captions_csv: the CSV file.
        (others: see :class:`MixtureDataModule`)
    """

    def __init__(self, root: str, captions_csv: str, **kwargs: Any) -> None:
        super().__init__(held_out_phrasings=False, **kwargs)
        self.root, self.captions_csv = Path(root), Path(captions_csv)
        self._rows: list[dict[str, str]] | None = None

    def rows(self) -> list[dict[str, str]]:
        """The validated CSV rows (each with ``row``: its line number in the CSV)."""
        if self._rows is None:
            self._rows = self._read_csv()
            has_class = "class" in self._rows[0]
            self.class_names = tuple(sorted({r["class"] for r in self._rows})) if has_class else ()
        return self._rows

    def _read_csv(self) -> list[dict[str, str]]:
        if not self.captions_csv.is_file():
            raise FileNotFoundError(f"captions CSV {self.captions_csv} not found")
        try:  # utf-8-sig: a byte-order mark, as spreadsheet programs write, is not a column
            with open(self.captions_csv, newline="", encoding="utf-8-sig") as handle:
                rows = self._parse_csv(csv.DictReader(handle))
        except UnicodeDecodeError as error:
            raise ValueError(f"{self.captions_csv}: not UTF-8 text ({error.reason})") from None
        except csv.Error as error:
            raise ValueError(f"{self.captions_csv}: not a valid CSV ({error})") from None
        if not rows:
            raise ValueError(f"{self.captions_csv}: no rows")
        self._check_consistent(rows)
        return rows

    def _parse_csv(self, reader: csv.DictReader) -> list[dict[str, str]]:
        if reader.fieldnames is None:
            raise ValueError(f"{self.captions_csv}: empty file (expected a header line)")
        columns = [name.strip() for name in reader.fieldnames]
        for needed in ("file", "caption"):
            if needed not in columns:
                raise ValueError(
                    f"{self.captions_csv}: missing column `{needed}` (header has {columns}; "
                    "expected file,caption[,class][,split])"
                )
        rows = []
        for line, raw in enumerate(reader, start=2):
            if None in raw:
                raise ValueError(
                    f"{self.captions_csv} row {line}: more cells than the header's {columns}"
                )
            if any(value is None for value in raw.values()):
                raise ValueError(
                    f"{self.captions_csv} row {line}: fewer cells than the header's {columns}"
                )
            row = {k.strip(): v.strip() for k, v in raw.items()}
            rows.append(self._checked_row(row, line))
        return rows

    def _check_consistent(self, rows: list[dict[str, str]]) -> None:
        """The rows of one file (one per caption) must agree on its class and split."""
        for column in ("class", "split"):
            seen: dict[str, dict[str, str]] = {}
            for row in rows:
                if column not in row:
                    break
                first = seen.setdefault(row["file"], row)
                if first[column] != row[column]:
                    raise ValueError(
                        f"{self.captions_csv} rows {first['row']} and {row['row']}: "
                        f"{row['file']} has {column} {first[column]!r} and {row[column]!r}"
                    )

    def _checked_row(self, row: dict[str, str], line: int) -> dict[str, str]:
        where = f"{self.captions_csv} row {line}"
        if not (self.root / row["file"]).is_file():
            raise FileNotFoundError(f"{where}: audio file {self.root / row['file']} not found")
        if not row["caption"]:
            raise ValueError(f'{where}: empty caption ("" is reserved for the null query)')
        if "split" in row and row["split"] not in SPLITS:
            raise ValueError(f"{where}: split must be one of {SPLITS}, got {row['split']!r}")
        return {**row, "row": str(line)}

    def _split_of_files(self, rows: list[dict[str, str]]) -> dict[str, str]:
        files = list(dict.fromkeys(row["file"] for row in rows))
        if "split" in rows[0]:
            return {row["file"]: row["split"] for row in rows}
        order = np.random.default_rng(self.seed).permutation(len(files))
        n_val = round(self.val_fraction * len(files))
        n_test = round(self.test_fraction * len(files))
        names = ["val"] * n_val + ["test"] * n_test + ["train"] * (len(files) - n_val - n_test)
        return {files[i]: split for i, split in zip(order, names)}

    def load_clip_sets(self) -> dict[str, ClipSet]:
        rows = self.rows()
        split_of = self._split_of_files(rows)
        files = list(dict.fromkeys(row["file"] for row in rows))
        audio = {
            name: fit_length(load_audio(self.root / name, self.sample_rate), self.clip_samples)
            for name in files
        }
        file_id = {name: index for index, name in enumerate(files)}
        class_of = {name: index for index, name in enumerate(self.class_names)}
        sets = {}
        for split in SPLITS:
            chosen = [row for row in rows if split_of[row["file"]] == split]
            if not chosen:
                raise ValueError(f"{self.captions_csv}: the {split} split holds no rows")
            labels = torch.tensor([class_of.get(r.get("class", ""), -1) for r in chosen])
            groups = (
                labels if self.class_names else torch.tensor([file_id[r["file"]] for r in chosen])
            )
            if len(groups.unique()) < 2:
                raise ValueError(
                    f"{self.captions_csv}: the {split} split holds one class/file only; mixtures "
                    "need an interferer from another (add rows or change the split fractions)"
                )
            sets[split] = ClipSet(
                torch.stack([audio[r["file"]] for r in chosen]),
                groups,
                labels,
                [r["caption"] for r in chosen],
            )
        return sets
