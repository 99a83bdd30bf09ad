"""``pip install mmflow`` without extras imports and trains.

The test builds the installation a user without extras has: the distributions named in
``pyproject.toml``'s base ``dependencies`` and everything they require, found through their
installed metadata, are linked into an empty folder beside the ``mmflow`` package, and a fresh
interpreter that sees only that folder (``python -S``: no site-packages) imports the core and
trains a tiny flow. An import of anything outside the base set fails there as it would for the
user.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def base_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(text) for text in project["dependencies"]]


def required_distributions(requirements: list[Requirement]) -> dict[str, metadata.Distribution]:
    """The installed distributions the requirements need, transitively (extras left out)."""
    found: dict[str, metadata.Distribution] = {}
    pending = list(requirements)
    while pending:
        requirement = pending.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        key = requirement.name.lower().replace("_", "-")
        if key in found:
            continue
        try:
            distribution = metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            raise AssertionError(
                f"base dependency {requirement.name} is not installed: run `make install`"
            ) from None
        found[key] = distribution
        pending += [Requirement(text) for text in distribution.requires or []]
    return found


def top_level_entries(distribution: metadata.Distribution) -> set[Path]:
    """The site-packages entries (packages, modules, .dist-info) a distribution installed."""
    entries = set()
    for file in distribution.files or []:
        parts = Path(file).parts
        if parts and parts[0] not in ("..", "__pycache__") and not parts[0].endswith(".pth"):
            entries.add(Path(distribution.locate_file(parts[0])))
    return entries


def base_site(folder: Path) -> Path:
    """A folder holding links to the base distributions and to the ``mmflow`` package."""
    folder.mkdir()
    for distribution in required_distributions(base_requirements()).values():
        for entry in top_level_entries(distribution):
            if entry.exists() and not (folder / entry.name).exists():
                (folder / entry.name).symlink_to(entry)
    (folder / "mmflow").symlink_to(ROOT / "mmflow")
    return folder


IMPORT_AND_TRAIN = textwrap.dedent(
    """
    import importlib.util
    import mmflow, mmflow.cli, mmflow.finetune, mmflow.hub, mmflow.nn, mmflow.pretrained
    import mmflow.sampling, mmflow.training
    import pytorch_lightning as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    from mmflow.modality import ModalityAdapter
    from mmflow.nn import MMDiT, SetTokens
    from mmflow.training import FlowMatching

    for extra in ("matplotlib", "diffusers", "modalities", "torchaudio", "sklearn"):
        assert importlib.util.find_spec(extra) is None, f"{extra} is visible"

    class Points(ModalityAdapter):
        def encode(self, batch):
            return batch["points"], {"class_labels": batch["labels"]}
        def decode(self, x1, cond, batch=None):
            return x1
        def null_condition(self, cond):
            return {"class_labels": torch.full_like(cond["class_labels"], 2)}

    def collate(rows):
        points, labels = zip(*rows)
        return {"points": torch.stack(points), "labels": torch.stack(labels)}

    data = TensorDataset(torch.randn(32, 4, 2), torch.arange(32) % 2)
    network = MMDiT(SetTokens(2), hidden_size=16, depth=1, num_heads=2, num_classes=2)
    module = FlowMatching(Points(), network, nfe=2, sampler="euler")
    trainer = pl.Trainer(
        max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        limit_val_batches=0, accelerator="cpu",
    )
    trainer.fit(module, DataLoader(data, batch_size=8, collate_fn=collate))
    samples, nfe = module.generate({"class_labels": torch.tensor([0, 1])}, torch.randn(2, 4, 2))
    assert nfe == 2 and samples.shape == (2, 4, 2) and bool(torch.isfinite(samples).all())
    print("base install imports and trains")
    """
)


def test_the_core_imports_and_trains_with_the_base_dependencies_only(tmp_path):
    site = base_site(tmp_path / "site")
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    env["PYTHONPATH"] = str(site)
    result = subprocess.run(
        [sys.executable, "-S", "-c", IMPORT_AND_TRAIN],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "base install imports and trains" in result.stdout
