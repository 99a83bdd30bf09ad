"""The small CNN classifier, FD-ours and class accuracy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from modalities.image import ClassAccuracy, ClassifierFD, MNIST5k, SmallCNN
from modalities.image.classifier import ClassifierConfig, main


def test_brief_training_is_well_above_chance(trained_classifier):
    model, val_accuracy, path = trained_classifier
    assert val_accuracy > 0.5  # chance is 0.1; the full recipe reaches 0.98
    config = json.loads((path / "config.json").read_text())
    assert config["init_args"] == {
        "in_channels": 1,
        "num_classes": 10,
        "width": 16,
        "feature_dim": 64,
    }
    assert config["info"]["dataset"] == "mnist5k"
    assert config["info"]["val_accuracy"] == val_accuracy
    images = torch.rand(3, 1, 28, 28)
    loaded = SmallCNN.from_pretrained(path)
    torch.testing.assert_close(loaded(images), model(images))
    assert not any(parameter.requires_grad for parameter in loaded.parameters())


def test_missing_or_mismatched_classifier_is_a_clear_error(tmp_path: Path, trained_classifier):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=rf"{missing}.*--dataset mnist5k --out {missing}"):
        SmallCNN.from_pretrained(missing)
    _, _, path = trained_classifier
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    config = json.loads((path / "config.json").read_text())
    config["init_args"]["width"] = 8
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"copy/model.safetensors: weights do not fit"):
        SmallCNN.from_pretrained(copy)


def test_fd_ours_is_zero_for_identical_sets_and_large_for_noise(mnist: MNIST5k, trained_classifier):
    model, _, _ = trained_classifier
    real = mnist.datasets["val"][list(range(300))]
    other_real = mnist.datasets["test"][list(range(300))]
    noise = torch.rand(300, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    metric = ClassifierFD(model, reset_real_features=False)

    def distance_to(generated: torch.Tensor) -> float:
        metric.reset()
        metric.update(generated, real)
        return metric.compute().item()

    same, between_real, to_noise = (
        distance_to(real["image"]),
        distance_to(other_real["image"]),
        distance_to(noise),
    )
    assert abs(same) < 1e-6 * metric.statistics("real")[1].trace().item()
    assert 0 < between_real and to_noise > 5 * between_real
    assert ClassifierFD.display_name == "FD-ours"


def test_fd_ours_respects_max_samples(mnist: MNIST5k, trained_classifier):
    model, _, _ = trained_classifier
    batch = mnist.datasets["val"][list(range(100))]
    metric = ClassifierFD(model, max_samples=150)
    metric.update(batch["image"], batch)
    metric.update(batch["image"], batch)
    assert metric.real_count.item() == 150 and metric.fake_count.item() == 150
    # Exactly the first 150 images were kept: all 100, then the first 50 of the second batch.
    kept = torch.cat([batch["image"], batch["image"][:50]])
    with torch.no_grad():
        features = model.features(kept).double()
    mean, _ = metric.statistics("real")
    torch.testing.assert_close(mean, features.mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(metric.statistics("fake")[0], mean)
    assert abs(metric.compute().item()) < 1e-6 * metric.statistics("real")[1].trace().item()


class BrightnessClassifier(nn.Module):
    """Toy judge: the class of an image is ``round(9 * mean pixel)``."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        predicted = (images.mean((1, 2, 3)) * 9).round().long()
        return nn.functional.one_hot(predicted, 10).float()


def test_class_accuracy_closed_form():
    metric = ClassAccuracy(BrightnessClassifier())
    levels = torch.tensor([0, 3, 5, 9, 2, 7])
    images = (levels.float() / 9).view(-1, 1, 1, 1).expand(-1, 1, 4, 4)
    labels = torch.tensor([0, 3, 1, 9, 2, 0])  # 4 of 6 match
    metric.update(images[:4], {"label": labels[:4]})
    metric.update(images[4:], {"label": labels[4:]})
    assert metric.compute().item() == pytest.approx(4 / 6)
    metric.reset()
    metric.update(images, {"label": levels})
    assert metric.compute().item() == 1.0


def test_command_line_trains_and_reports(
    tmp_path: Path, cache_dir: str, capsys: pytest.CaptureFixture
):
    out = tmp_path / "cli"
    status = main(
        [
            "--dataset",
            "digits",
            "--out",
            str(out),
            "--epochs",
            "1",
            "--limit",
            "200",
            "--width",
            "8",
            "--feature-dim",
            "24",
            "--cache-dir",
            cache_dir,
        ]
    )
    assert status == 0 and (out / "config.json").is_file()
    assert (out / "model.safetensors").is_file()
    printed = capsys.readouterr().out
    assert "validation accuracy" in printed
    loaded = SmallCNN.from_pretrained(out)
    assert loaded.config == ClassifierConfig(in_channels=1, num_classes=10, width=8, feature_dim=24)
    assert loaded.features(torch.rand(2, 1, 8, 8)).shape == (2, 24)
    info = json.loads((out / "config.json").read_text())["info"]
    assert f"validation accuracy {info['val_accuracy']:.4f}" in printed
    assert info["dataset"] == "sklearn-digits" and 0.0 <= info["val_accuracy"] <= 1.0
    missing = main(["--dataset", "folder", "--root", str(tmp_path / "none"), "--out", str(out)])
    assert missing == 1 and "image folder" in capsys.readouterr().err
