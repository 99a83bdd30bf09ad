"""FlowSep mixing: the SNR formula, peak normalisation, silent inputs, fixed eval mixtures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from modalities.audio.captions import (
    CAPTION_TEMPLATES,
    HELD_OUT_TEMPLATES,
    captions_for,
    draw_caption,
)
from modalities.audio.data import CaptionedWavFolder, ClipSet, MixtureDataset, mix_at_snr

CLASSES = ("speech", "piano", "drums")


def _power_db(x: torch.Tensor) -> torch.Tensor:
    return 10 * torch.log10(x.double().square().mean(-1))


def _toy_clips(per_class: int = 8, samples: int = 1600) -> ClipSet:
    """Sine tones (class 0, 1) and noise bursts (class 2) of random levels."""
    generator = torch.Generator().manual_seed(0)
    time = torch.arange(samples) / 16000
    tones = [
        torch.sin(2 * torch.pi * (200 + 50 * k + 400 * c) * time)
        for c in range(2)
        for k in range(per_class)
    ]
    noise = list(torch.randn(per_class, samples, generator=generator) * 0.3)
    clips = torch.stack(tones + noise) * (0.1 + torch.rand(3 * per_class, 1, generator=generator))
    labels = torch.arange(3).repeat_interleave(per_class)
    return ClipSet(clips.float(), labels, labels)


def test_scaled_interferer_hits_the_drawn_snr_and_peak_is_limited() -> None:
    generator = torch.Generator().manual_seed(1)
    target = torch.randn(64, 4000, generator=generator) * 0.5
    interferer = torch.randn(64, 4000, generator=generator) * 0.05
    snr = torch.empty(64).uniform_(-15, 15, generator=generator)
    mixed = mix_at_snr(target, interferer, snr)
    measured = _power_db(mixed["target"]) - _power_db(mixed["interferer"])
    assert torch.allclose(measured, snr.double(), atol=0.01)
    assert mixed["mixture"].abs().amax(-1).max() <= 0.9 + 1e-6
    assert torch.allclose(mixed["mixture"], mixed["target"] + mixed["interferer"], atol=1e-6)
    quiet = mix_at_snr(target * 0.01, interferer * 0.01, torch.zeros(64))
    assert torch.allclose(quiet["target"], target * 0.01)  # no clipping: left as is


def test_silent_target_and_interferer_do_not_divide_by_zero() -> None:
    target = torch.zeros(2, 1000)
    target[1] = 0.1
    interferer = torch.full((2, 1000), 0.2)
    interferer[1] = 0.0
    mixed = mix_at_snr(target, interferer, torch.tensor([5.0, 5.0]))
    assert all(torch.isfinite(v).all() for k, v in mixed.items() if k != "snr_db")
    assert torch.equal(mixed["mixture"][0], interferer[0])
    assert torch.equal(mixed["mixture"][1], target[1])
    assert mixed["snr_db"].tolist() == [-float("inf"), float("inf")]


def test_interferers_come_from_other_classes_and_batches_have_the_contract() -> None:
    clips = _toy_clips()
    dataset = MixtureDataset(clips, "train", CLASSES, seed=3)
    batch = dataset.__getitems__(list(range(len(dataset))))
    assert set(batch) == {"mixture", "target", "interferer", "class_index", "caption", "snr_db"}
    assert batch["mixture"].shape == (24, 1600) and batch["class_index"].dtype == torch.long
    assert len(batch["caption"]) == 24 and all(isinstance(c, str) and c for c in batch["caption"])
    assert batch["snr_db"].min() >= -15 and batch["snr_db"].max() <= 15
    # Item i: clip i as target (at most peak-normalised), mixed at the reported SNR.
    torch.testing.assert_close(batch["mixture"], batch["target"] + batch["interferer"])
    factor = (batch["target"] * clips.clips).sum(1) / clips.clips.square().sum(1)
    assert (factor > 0).all() and (factor <= 1 + 1e-6).all()
    torch.testing.assert_close(batch["target"], clips.clips * factor[:, None])
    measured = _power_db(batch["target"]) - _power_db(batch["interferer"])
    torch.testing.assert_close(measured, batch["snr_db"].double(), atol=0.01, rtol=0)
    assert torch.equal(batch["class_index"], clips.class_index)
    for caption, k in zip(batch["caption"], batch["class_index"].tolist()):
        assert caption in captions_for(CLASSES[k], "train")
    draws = dataset._draw(torch.arange(24).repeat(50), torch.Generator().manual_seed(0))
    assert (clips.groups[draws["interferer"]] != clips.groups.repeat(50)).all()
    assert set(draws["interferer"].tolist()) == set(range(24))  # every other clip is reachable


def test_validation_mixtures_are_fixed_and_training_ones_vary() -> None:
    first = MixtureDataset(_toy_clips(), "val", CLASSES, seed=5, fixed=True)
    second = MixtureDataset(_toy_clips(), "val", CLASSES, seed=5, fixed=True)
    a, b = first.__getitems__([0, 3, 9]), second.__getitems__([0, 3, 9])
    assert torch.equal(a["mixture"], b["mixture"]) and a["caption"] == b["caption"]
    assert torch.equal(first.__getitems__([3])["mixture"][0], a["mixture"][1])
    train = MixtureDataset(_toy_clips(), "train", CLASSES, seed=5)
    assert not torch.equal(
        train.__getitems__([0, 1])["snr_db"], train.__getitems__([0, 1])["snr_db"]
    )


def test_held_out_phrasings_never_reach_training() -> None:
    train = MixtureDataset(_toy_clips(), "train", CLASSES, seed=0)
    seen = {c for _ in range(20) for c in train.__getitems__(list(range(24)))["caption"]}
    held = {t for name in CLASSES for t in HELD_OUT_TEMPLATES[name]}
    assert seen and not seen & held
    test = MixtureDataset(_toy_clips(), "test", CLASSES, seed=0, fixed=True)
    assert set(test.fixed_draws["caption"]) <= held
    for name, templates in CAPTION_TEMPLATES.items():
        train_phrasings, held_phrasings = captions_for(name, "train"), captions_for(name, "val")
        assert len(train_phrasings) >= 3 and len(held_phrasings) >= 2
        assert set(train_phrasings) | set(held_phrasings) == set(templates)
        assert not set(train_phrasings) & set(held_phrasings)
    assert captions_for("piano", "test", held_out=False) == captions_for("piano", "train")
    assert draw_caption("piano", "train", torch.Generator().manual_seed(0)) in templates_of("piano")


def templates_of(name: str) -> tuple[str, ...]:
    return CAPTION_TEMPLATES[name]


def test_caption_dropout_gives_the_null_query() -> None:
    train = MixtureDataset(_toy_clips(), "train", CLASSES, seed=0, caption_dropout=1.0)
    assert set(train.__getitems__([0, 1, 2])["caption"]) == {""}
    never = MixtureDataset(_toy_clips(), "train", CLASSES, seed=0)
    assert "" not in never.__getitems__(list(range(24)))["caption"]


def _write_folder(root: Path, with_class: bool = True) -> Path:
    rate = 16000
    rows = ["file,caption,class" if with_class else "file,caption"]
    for k in range(12):
        kind = ["tone", "noise", "chirp"][k % 3]
        t = np.arange(rate // 2) / rate
        if kind == "tone":
            audio = 0.3 * np.sin(2 * np.pi * (300 + 20 * k) * t)
        elif kind == "noise":
            audio = 0.1 * np.random.default_rng(k).standard_normal(len(t))
        else:
            audio = 0.3 * np.sin(2 * np.pi * (200 + 2000 * t) * t)
        name = f"{kind}{k}.wav"
        soundfile.write(root / name, np.stack([audio, audio], 1).astype(np.float32), 22050)
        rows.append(f"{name},a {kind} sound {k}" + (f",{kind}" if with_class else ""))
    csv_path = root / "captions.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    return csv_path


def test_captioned_wav_folder_builds_mixtures(tmp_path: Path) -> None:
    csv_path = _write_folder(tmp_path)
    module = CaptionedWavFolder(
        str(tmp_path), str(csv_path), clip_seconds=1.0, batch_size=4, val_fraction=0.25,
        test_fraction=0.25,
    )  # fmt: skip
    module.setup()
    assert module.class_names == ("chirp", "noise", "tone")
    batch = next(iter(module.train_dataloader()))
    assert batch["mixture"].shape == (4, 16000)
    assert all(c.startswith("a ") for c in batch["caption"])
    torch.testing.assert_close(batch["mixture"], batch["target"] + batch["interferer"])
    for caption, k in zip(batch["caption"], batch["class_index"].tolist()):
        assert caption.startswith(f"a {module.class_names[k]} sound ")  # the target's own row
    val = module.datasets["val"]
    classes = val.clip_set.class_index
    assert (classes[val.fixed_draws["interferer"]] != classes).all()
    again = CaptionedWavFolder(str(tmp_path), str(csv_path), clip_seconds=1.0, batch_size=4,
                               val_fraction=0.25, test_fraction=0.25)  # fmt: skip
    first, second = next(iter(module.test_dataloader())), next(iter(again.predict_dataloader()))
    assert torch.equal(first["mixture"], second["mixture"])


def test_validation_batches_come_in_a_fixed_shuffled_order(tmp_path: Path) -> None:
    csv_path = _write_folder(tmp_path)
    module = CaptionedWavFolder(str(tmp_path), str(csv_path), clip_seconds=1.0, batch_size=64,
                                val_fraction=0.4, test_fraction=0.25)  # fmt: skip
    module.setup()
    val = module.datasets["val"]
    natural = val.__getitems__(list(range(len(val))))
    first = next(iter(module.val_dataloader()))
    assert first["target"].shape == natural["target"].shape
    assert not torch.equal(first["target"], natural["target"]), "validation order is shuffled"
    energies = sorted(first["target"].square().sum(1).tolist())
    assert energies == pytest.approx(sorted(natural["target"].square().sum(1).tolist()))
    again = next(iter(module.val_dataloader()))
    assert torch.equal(first["mixture"], again["mixture"])


def test_captioned_wav_folder_without_classes_mixes_other_files(tmp_path: Path) -> None:
    csv_path = _write_folder(tmp_path, with_class=False)
    module = CaptionedWavFolder(str(tmp_path), str(csv_path), val_fraction=0.25, test_fraction=0.25)
    module.setup()
    batch = module.datasets["train"].__getitems__([0, 1, 2])
    assert batch["class_index"].tolist() == [-1, -1, -1]
    train = module.datasets["train"]
    draws = train._draw(torch.arange(len(train)), torch.Generator().manual_seed(0))
    assert (train.clip_set.groups[draws["interferer"]] != train.clip_set.groups).all()


def test_captioned_wav_folder_names_the_bad_row_or_column(tmp_path: Path) -> None:
    csv_path = _write_folder(tmp_path)
    lines = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join([*lines[:3], "missing.wav,a ghost,tone", *lines[3:]]) + "\n")
    with pytest.raises(FileNotFoundError, match=r"captions.csv row 4: .*missing.wav"):
        CaptionedWavFolder(str(tmp_path), str(csv_path)).setup()
    csv_path.write_text("path,caption\nx.wav,hello\n")
    with pytest.raises(ValueError, match=r"captions.csv: missing column `file`"):
        CaptionedWavFolder(str(tmp_path), str(csv_path)).setup()


def test_a_captions_csv_with_a_byte_order_mark_reads_as_without(tmp_path: Path) -> None:
    csv_path = _write_folder(tmp_path)
    plain = CaptionedWavFolder(str(tmp_path), str(csv_path)).rows()
    csv_path.write_bytes(b"\xef\xbb\xbf" + csv_path.read_bytes())
    assert CaptionedWavFolder(str(tmp_path), str(csv_path)).rows() == plain
