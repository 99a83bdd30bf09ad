"""PixelAdapter: pixel scaling, class conditions, CFG dropout, PNG grids, evaluators."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmflow.modality import drop_conditions
from mmflow.nn import MMDiT, Patchify2D
from modalities.image import PixelAdapter, save_image_grid
from tests.mmflow.nn.helpers import randomize_


def _batch(size: int = 4) -> dict:
    generator = torch.Generator().manual_seed(0)
    return {
        "image": torch.rand(size, 1, 8, 8, generator=generator),
        "label": torch.arange(size) % 3,
    }


def test_encode_decode_round_trip():
    adapter = PixelAdapter(num_classes=3)
    batch = _batch()
    x1, cond = adapter.encode(batch)
    assert x1.min() >= -1 and x1.max() <= 1
    torch.testing.assert_close(x1, batch["image"] * 2 - 1)
    torch.testing.assert_close(adapter.decode(x1, cond), batch["image"])
    assert adapter.decode(torch.tensor([-3.0, 0.0, 5.0])).tolist() == [0.0, 0.5, 1.0]
    assert torch.equal(cond["class_labels"], batch["label"])


def test_null_condition_and_dropout_use_the_null_class():
    adapter = PixelAdapter(num_classes=3)
    _, cond = adapter.encode(_batch())
    null = adapter.null_condition(cond)
    assert null["class_labels"].tolist() == [3, 3, 3, 3]
    drop = torch.tensor([True, False, True, False])
    mixed = drop_conditions(cond, null, drop)
    assert mixed["class_labels"].tolist() == [3, 1, 3, 0]
    assert adapter.conditioned()


def test_unconditional_adapter_has_empty_conditions():
    adapter = PixelAdapter(num_classes=None)
    x1, cond = adapter.encode(_batch())
    assert cond == {} and adapter.null_condition(cond) == {} and not adapter.conditioned()
    assert len(adapter.evaluators()) == 0 and x1.shape == (4, 1, 8, 8)
    torch.testing.assert_close(x1, _batch()["image"] * 2 - 1)
    torch.testing.assert_close(adapter.decode(x1), _batch()["image"])


def test_conditions_feed_the_mmdit():
    adapter = PixelAdapter(num_classes=3)
    model = MMDiT(Patchify2D(1, 2), hidden_size=32, depth=1, num_heads=2, num_classes=3)
    x1, cond = adapter.encode(_batch())
    t = torch.rand(4)
    assert model(x1, t, **cond).shape == x1.shape
    assert model(x1, t, **adapter.null_condition(cond)).shape == x1.shape
    # A fresh MMDiT outputs exactly 0 (adaLN-Zero), so compare with randomised weights.
    randomize_(model, std=0.2, seed=0)
    with torch.no_grad():
        labelled = model(x1, t, **cond)
        null = model(x1, t, **adapter.null_condition(cond))
        changed = {"class_labels": cond["class_labels"].clone()}
        changed["class_labels"][1] = (changed["class_labels"][1] + 1) % 3
        relabelled = model(x1, t, **changed)
    per_sample = (labelled - null).flatten(1).abs().amax(dim=1)
    assert (per_sample > 1e-3).all(), per_sample  # every sample sees its condition
    assert not torch.allclose(relabelled[1], labelled[1], atol=1e-4)
    others = [0, 2, 3]
    torch.testing.assert_close(relabelled[others], labelled[others])


def test_save_media_writes_a_readable_png_grid(tmp_path: Path):
    adapter = PixelAdapter(num_classes=3, grid_rows=3)
    images = torch.zeros(5, 1, 8, 8)
    images[1] = 1.0
    (path,) = adapter.save_media(images, tmp_path / "samples", "step-10")
    assert path == tmp_path / "samples" / "step-10.png"
    grid = np.asarray(Image.open(path))
    scale, tile = 12, 8 * 12 + 2  # 8 px upscaled to at least 96 px, 2 px padding
    assert grid.shape == (2 * tile + 2, 3 * tile + 2)
    assert grid[2 + 5, tile + 2 + 5] == 255 and grid[2 + 5, 2 + 5] == 0
    assert grid[0, 0] == 255 and grid[tile + 2 + 5, 2 * tile + 2 + 5] == 255  # padding, empty cell
    assert scale * 8 == 96


def test_rgb_grid(tmp_path: Path):
    images = torch.zeros(2, 3, 4, 4)
    images[:, 1] = 1.0
    path = save_image_grid(images, tmp_path / "rgb.png", nrow=2, min_image_size=4, padding=0)
    pixels = np.asarray(Image.open(path))
    assert (
        pixels.shape == (4, 8, 3) and (pixels[..., 1] == 255).all() and (pixels[..., 0] == 0).all()
    )
    with pytest.raises(ValueError, match=r"\[B, 1 or 3, H, W\]"):
        save_image_grid(torch.zeros(2, 2, 4, 4), tmp_path / "bad.png")


def test_evaluators_follow_the_configuration(trained_classifier):
    _, _, path = trained_classifier
    conditional = PixelAdapter(num_classes=10, classifier_path=str(path))
    assert set(conditional.evaluators()) == {"fd_ours", "class_accuracy"}
    unconditional = PixelAdapter(num_classes=None, classifier_path=str(path))
    assert set(unconditional.evaluators()) == {"fd_ours"}
    assert conditional.state_dict() == {}  # feature networks stay out of flow checkpoints


def test_missing_classifier_fails_at_construction(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"python -m modalities.image.classifier"):
        PixelAdapter(num_classes=10, classifier_path=str(tmp_path / "none.safetensors"))


def test_sample_conditions_cycle_through_the_classes():
    shape, cond = PixelAdapter(num_classes=10, image_shape=(1, 28, 28)).sample_conditions(12)
    assert shape == (12, 1, 28, 28)
    assert cond["class_labels"].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert PixelAdapter(image_shape=(3, 8, 8)).sample_conditions(2) == ((2, 3, 8, 8), {})
    with pytest.raises(ValueError, match="image_shape"):
        PixelAdapter(num_classes=10).sample_conditions(2)
