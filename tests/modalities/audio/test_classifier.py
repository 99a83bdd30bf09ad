"""The audio classifier behind query accuracy, its folder, and the QueryAccuracy evaluator.

Everything here runs on synthesised clips (low tones, high tones, white noise), never on the
real LASS data: the real classifier is trained by ``python -m modalities.audio.classifier``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from mmflow.files import save_weights
from modalities.audio import classifier as classifier_module
from modalities.audio.classifier import AudioClassifier, QueryAccuracy, train_audio_classifier
from modalities.audio.data import ClipSet, MixtureDataModule

TOY_CLASSES = ("low", "high", "noise")
SAMPLE_RATE = 16000
CLIP_SECONDS = 0.4


def toy_clips(per_class: int, seed: int) -> ClipSet:
    """``per_class`` clips of each toy class: a 150-400 Hz sine, a 2-5 kHz sine, white noise."""
    generator = torch.Generator().manual_seed(seed)
    samples = round(CLIP_SECONDS * SAMPLE_RATE)
    time = torch.arange(samples) / SAMPLE_RATE

    def amplitudes() -> torch.Tensor:
        return 0.05 + 0.45 * torch.rand(per_class, 1, generator=generator)

    def sines(low: float, high: float) -> torch.Tensor:
        frequency = low + (high - low) * torch.rand(per_class, 1, generator=generator)
        phase = 2 * math.pi * torch.rand(per_class, 1, generator=generator)
        return amplitudes() * torch.sin(2 * math.pi * frequency * time + phase)

    noise = amplitudes() * 0.5 * torch.randn(per_class, samples, generator=generator)
    clips = torch.cat([sines(150, 400), sines(2000, 5000), noise])
    labels = torch.arange(len(TOY_CLASSES)).repeat_interleave(per_class)
    return ClipSet(clips, labels, labels, [f"a {TOY_CLASSES[i]} sound" for i in labels.tolist()])


class ToyMixtures(MixtureDataModule):
    """Mixtures of the toy clips: 24 train / 8 val / 8 test clips a class."""

    class_names = TOY_CLASSES

    def __init__(self, batch_size: int = 16, seed: int = 0, **_: object) -> None:
        super().__init__(CLIP_SECONDS, SAMPLE_RATE, batch_size, seed=seed)

    def load_clip_sets(self) -> dict[str, ClipSet]:
        return {
            "train": toy_clips(24, self.seed),
            "val": toy_clips(8, self.seed + 1),
            "test": toy_clips(8, self.seed + 2),
        }


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: these tensors are tiny, and on a busy CPU more OpenMP threads were
    several times slower (they spin waiting for each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def toy_classifier(tmp_path_factory: pytest.TempPathFactory):
    """A width-4 classifier trained for 60 steps on the toy clips (a few seconds), and its folder."""
    path = tmp_path_factory.mktemp("audio-classifier") / "toy"
    datamodule = ToyMixtures(batch_size=16)
    model, report = train_audio_classifier(datamodule, path, steps=60, lr=1e-2, width=4)
    return model, report, path, datamodule


def test_toy_training_reaches_high_accuracy_and_saves_its_report(toy_classifier) -> None:
    _, report, path, _ = toy_classifier
    assert report["val_accuracy"] >= 0.95  # chance is 1/3
    assert set(report["val_accuracy_per_class"]) == set(TOY_CLASSES)
    assert 0.0 <= report["val_mixture_accuracy"] <= 1.0
    config = json.loads((path / "config.json").read_text())
    assert config["init_args"]["class_names"] == list(TOY_CLASSES)
    assert config["info"]["val_accuracy"] == report["val_accuracy"]
    assert not list(path.glob(".*tmp*"))  # the atomic writes left no temporary file


def test_save_load_round_trip(toy_classifier, tmp_path: Path) -> None:
    model, report, path, _ = toy_classifier
    loaded = AudioClassifier.from_pretrained(path)
    assert loaded.class_names == TOY_CLASSES and loaded.width == 4
    assert loaded.pretrained_info["val_accuracy"] == report["val_accuracy"]
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    clips = 0.1 * torch.randn(3, 8000, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(loaded(clips), model.eval()(clips))
    assert loaded(clips[:, :4800]).shape == (3, 3)  # 0.3 s works as well (global pooling)
    again = AudioClassifier.from_pretrained(loaded.save_pretrained(tmp_path / "copy"))
    torch.testing.assert_close(again(clips), loaded(clips))


def test_query_accuracy_is_one_for_targets_and_low_for_swapped_estimates(toy_classifier) -> None:
    _, _, path, datamodule = toy_classifier
    batch = datamodule.datasets["val"].__getitems__(list(range(24)))
    metric = QueryAccuracy(str(path), list(TOY_CLASSES))
    metric.update(batch["target"], batch)
    results = metric.compute()
    assert results["query_accuracy"].item() == 1.0
    assert {f"query_accuracy/{name}" for name in TOY_CLASSES} <= set(results)
    metric.reset()
    # estimate i is the target of a clip of another class (8 clips a class, shift by 8)
    metric.update(batch["target"].roll(8, dims=0), batch)
    assert metric.compute()["query_accuracy"].item() <= 0.1
    metric.reset()
    metric.update(torch.full_like(batch["target"], math.nan), batch)
    assert metric.compute()["query_accuracy"].item() == 0.0  # non-finite estimates never count
    overall_only = QueryAccuracy(path)
    overall_only.update(batch["target"], batch)
    assert set(overall_only.compute()) == {"query_accuracy"}


def test_query_accuracy_keeps_the_classifier_out_of_checkpoints(toy_classifier) -> None:
    _, _, path, _ = toy_classifier
    metric = QueryAccuracy(path, list(TOY_CLASSES))
    assert list(metric.parameters()) == []
    assert not any("classifier" in key or "body" in key for key in metric.state_dict())
    assert set(metric._defaults) == {"sums", "counts", "total", "count"}
    assert metric.classifier.class_names == TOY_CLASSES


def test_missing_classifier_names_the_command(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "lass"
    command = f"python -m modalities.audio.classifier --out {missing}"
    with pytest.raises(FileNotFoundError, match=rf"{missing}: no AudioClassifier.*`{command}`"):
        AudioClassifier.from_pretrained(missing)
    with pytest.raises(FileNotFoundError, match=rf"`{command}`"):
        QueryAccuracy(str(missing), list(TOY_CLASSES))


def test_corrupt_or_foreign_files_are_a_value_error_naming_the_file(tmp_path: Path) -> None:
    garbage = AudioClassifier(list(TOY_CLASSES), width=4).save_pretrained(tmp_path / "garbage")
    (garbage / "model.safetensors").write_bytes(b"\x00\x01 not a safetensors file")
    with pytest.raises(ValueError, match=rf"{garbage / 'model.safetensors'}: not a readable"):
        AudioClassifier.from_pretrained(garbage)
    foreign = AudioClassifier(list(TOY_CLASSES), width=4).save_pretrained(tmp_path / "foreign")
    save_weights(foreign / "model.safetensors", {"weight": torch.zeros(2)})
    with pytest.raises(ValueError, match=rf"{foreign / 'model.safetensors'}: weights do not fit"):
        AudioClassifier.from_pretrained(foreign)


def test_class_name_mismatch_is_a_value_error(toy_classifier) -> None:
    _, _, path, _ = toy_classifier
    with pytest.raises(ValueError, match=r"toy.*'low', 'high', 'noise'.*'a', 'b', 'c'"):
        QueryAccuracy(path, ["a", "b", "c"])
    metric = QueryAccuracy(path)  # no names: no check, but indices must fit the classifier
    batch = {
        "target": torch.zeros(2, 6400),
        "mixture": torch.zeros(2, 6400),
        "class_index": torch.tensor([0, 5]),
    }
    with pytest.raises(ValueError, match=r"class_index.*\[0, 3\)"):
        metric.update(batch["target"], batch)


def test_classifier_rejects_bad_class_names() -> None:
    with pytest.raises(ValueError, match="two distinct"):
        AudioClassifier(["speech", "speech"])


def test_command_line_trains_and_writes_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(classifier_module, "LASSMixtures", ToyMixtures)
    out = tmp_path / "cli"
    status = classifier_module.main(
        ["--out", str(out), "--steps", "3", "--batch_size", "8", "--width", "2"]
    )
    assert status == 0
    printed = capsys.readouterr().out
    assert "on clean targets" in printed and "on unseparated mixtures" in printed
    assert AudioClassifier.from_pretrained(out).pretrained_info["steps"] == 3
