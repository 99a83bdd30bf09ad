"""The mel vocoder: shapes, framing of the segments, training on tones, the pretrained folder."""

from __future__ import annotations

import json
import math

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from mmflow.training.cli import MMFlowCLI
from modalities.audio.mel import LogMel
from modalities.audio.vocoder import (
    MelVocoder,
    VocoderGenerator,
    VocoderInverter,
    multi_resolution_stft_loss,
)

SAMPLE_RATE = 16000
CLIP_SAMPLES = 5120  # 32 mel frames


def tiny_vocoder(**overrides) -> MelVocoder:
    config = {"channels": 32, "min_channels": 8, "segment_frames": 16, "lr": 3e-3}
    config.update(overrides)
    return MelVocoder(**config)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: small convolutions on a loaded CPU run far faster without the pool."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Tones(Dataset):
    """32 harmonic tones (3 partials, f0 in 150-1650 Hz) as datamodule-style dict items."""

    def __init__(self, count: int = 32) -> None:
        generator = torch.Generator().manual_seed(0)
        f0 = 150 + 1500 * torch.rand(count, 1, generator=generator)
        t = torch.arange(CLIP_SAMPLES) / SAMPLE_RATE
        self.waveforms = sum(0.4 / k * torch.sin(2 * math.pi * k * f0 * t) for k in (1, 2, 3))

    def __len__(self) -> int:
        return len(self.waveforms)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        waveform = self.waveforms[index]
        return {"target": waveform, "mixture": 0.5 * waveform, "class_index": torch.tensor(0)}


@pytest.mark.parametrize("frames", [1, 2, 7, 37])
def test_output_has_hop_samples_per_frame(frames: int) -> None:
    vocoder = tiny_vocoder().eval()
    log_mel = torch.randn(2, 64, frames) - 5.0
    waveform = vocoder.vocode(log_mel)
    assert waveform.shape == (2, frames * 160)
    assert waveform.abs().max() <= 1.0
    assert waveform.abs().max() > 1e-3  # not silent: the (non-zero) generator responds
    if frames == 37:
        with torch.no_grad():
            # Rows are vocoded independently; the network is convolutional, so changing frame 0
            # changes the start of the waveform and leaves frames 20.. (far outside the
            # receptive field) as they were.
            changed = log_mel.clone()
            changed[:, :, 0] += 3.0
            both = vocoder.vocode(torch.cat([log_mel[1:], changed[1:]]))
            torch.testing.assert_close(both[0], waveform[1], atol=1e-6, rtol=0)
            assert (both[1, :160] - waveform[1, :160]).abs().max() > 1e-4
            torch.testing.assert_close(
                both[1, 20 * 160 :], waveform[1, 20 * 160 :], atol=1e-6, rtol=0
            )
    generator = VocoderGenerator(n_mels=40, hop_length=120, channels=16, upsample_factors=(3, 5, 8))
    assert generator(torch.randn(1, 40, frames)).shape == (1, frames * 120)


def test_upsample_factors_must_multiply_to_the_hop() -> None:
    with pytest.raises(ValueError, match=r"\(5, 4, 4\) multiply to 80, not hop_length=160"):
        VocoderGenerator(hop_length=160, upsample_factors=(5, 4, 4))
    with pytest.raises(ValueError, match="hop_length=256"):
        MelVocoder(n_fft=1024, hop_length=256, win_length=1024)


def test_segments_line_up_with_the_whole_clip_log_mel() -> None:
    vocoder = tiny_vocoder(segment_frames=12)
    waveform = Tones(4).waveforms
    log_mel = vocoder.mel(waveform)
    segment_mel, segment = vocoder.random_segments(
        log_mel, waveform, torch.Generator().manual_seed(3)
    )
    assert segment_mel.shape == (4, 64, 12) and segment.shape == (4, 12 * 160)
    starts = torch.randint(0, 32 - 12 + 1, (4,), generator=torch.Generator().manual_seed(3))
    assert starts.unique().numel() > 1
    for row, start in enumerate(starts.tolist()):
        assert torch.equal(segment_mel[row], log_mel[row, :, start : start + 12])
        assert torch.equal(segment[row], waveform[row, start * 160 : (start + 12) * 160])
    # frames 3 .. F-4 of a segment see only its own samples: its own mel agrees there
    interior = vocoder.mel(segment)[..., 3:-3]
    assert torch.allclose(interior, segment_mel[..., 3:-3], atol=1e-4)
    # clips no longer than a segment are used whole
    short_mel, short = vocoder.random_segments(log_mel[..., :10], waveform[:, :1650])
    assert short_mel.shape[-1] == 10 and short.shape[-1] == 1600


def test_losses_vanish_for_the_reference_and_combine_with_mel_weight() -> None:
    reference = Tones(2).waveforms
    convergence, log_magnitude = multi_resolution_stft_loss(reference, reference)
    assert convergence.item() == log_magnitude.item() == 0.0
    vocoder = tiny_vocoder(mel_weight=2.5)
    losses = vocoder.losses(vocoder.mel(reference), reference)
    expected = losses["spectral_convergence"] + losses["log_magnitude"] + 2.5 * losses["mel_l1"]
    assert torch.allclose(losses["loss"], expected)
    assert torch.allclose(losses["stft_loss"], expected - 2.5 * losses["mel_l1"])


def test_losses_are_float32_under_bf16_autocast() -> None:
    vocoder = tiny_vocoder()
    batch = {"target": Tones(2).waveforms}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = vocoder.batch_losses(batch)
    assert all(value.dtype == torch.float32 for value in losses.values())
    losses["loss"].backward()
    assert vocoder.generator.input.weight.grad is not None


def test_a_silent_segment_does_not_blow_up_the_spectral_convergence() -> None:
    tone = Tones(1).waveforms
    reference = torch.cat([tone, torch.zeros_like(tone)])
    estimate = torch.cat([tone, 1e-3 * torch.randn(tone.shape, generator=torch.Generator())])
    convergence, _ = multi_resolution_stft_loss(estimate, reference)
    assert 0.0 < convergence.item() < 0.05


def mel_l1(vocoder: MelVocoder, waveforms: torch.Tensor) -> float:
    with torch.no_grad():
        log_mel = vocoder.mel(waveforms)
        return (vocoder.mel(vocoder.vocode(log_mel)) - log_mel).abs().mean().item()


def test_training_on_tones_halves_the_mel_l1(tmp_path) -> None:
    torch.manual_seed(0)
    tones = Tones()
    vocoder = tiny_vocoder(
        channels=64, min_channels=16, batch_key="mixture", export_dir=str(tmp_path / "export")
    )
    before = mel_l1(vocoder.eval(), 0.5 * tones.waveforms)
    vocoder.train()
    trainer = pl.Trainer(
        max_steps=200,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(vocoder, DataLoader(tones, batch_size=8, shuffle=True))
    after = mel_l1(vocoder.eval(), 0.5 * tones.waveforms)
    assert after < 0.5 * before, (before, after)
    exported = VocoderInverter(tmp_path / "export")
    log_mel = vocoder.mel(tones.waveforms[:2])
    assert torch.equal(exported.invert(log_mel), vocoder.vocode(log_mel))
    assert json.loads((tmp_path / "export" / "config.json").read_text())["init_args"].keys() >= {
        "channels",
        "segment_frames",
    }
    assert "export_dir" not in json.loads((tmp_path / "export" / "config.json").read_text())


def test_missing_batch_key_is_named() -> None:
    with pytest.raises(KeyError, match="batch_key"):
        tiny_vocoder(batch_key="source").training_step({"target": torch.zeros(1, CLIP_SAMPLES)}, 0)


def test_segments_too_short_for_the_stft_loss() -> None:
    with pytest.raises(ValueError, match="segment_frames"):
        tiny_vocoder(segment_frames=6)


def test_save_and_load_round_trip_bit_for_bit(tmp_path) -> None:
    torch.manual_seed(0)
    vocoder = tiny_vocoder(kernel_sizes=(3, 5)).eval()
    vocoder.save_pretrained(tmp_path / "vocoder")
    inverter = VocoderInverter(tmp_path / "vocoder", mel=LogMel())
    saved_state = vocoder.generator.state_dict()
    loaded_state = inverter.generator.state_dict()
    assert saved_state.keys() == loaded_state.keys()
    assert all(torch.equal(saved_state[k], loaded_state[k]) for k in saved_state)
    assert inverter.mel.settings() == vocoder.mel.settings()
    assert not any(p.requires_grad for p in inverter.parameters())
    log_mel = torch.randn(2, 64, 21) - 5.0
    waveform = inverter.invert(log_mel, mixture_waveform=torch.randn(2, 21 * 160))
    assert torch.equal(waveform, vocoder.vocode(log_mel))
    assert torch.equal(inverter(log_mel, length=3000), waveform[:, :3000])
    padded = inverter.invert(log_mel, length=3500)
    assert torch.equal(padded[:, :3360], waveform) and not padded[:, 3360:].any()
    assert sorted(p.name for p in (tmp_path / "vocoder").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning:pytorch_lightning.cli")
def test_a_vocoder_built_by_the_cli_saves_only_constructor_arguments(tmp_path) -> None:
    model = {
        "class_path": "modalities.audio.vocoder.MelVocoder",
        "init_args": {"channels": 16, "min_channels": 8, "segment_frames": 8},
    }
    data = {"class_path": "pytorch_lightning.LightningDataModule"}
    args = ["--model", json.dumps(model), "--data", json.dumps(data), "--trainer.logger=false"]
    vocoder = MMFlowCLI(args=args, run=False).model
    assert "_class_path" in vocoder.hparams  # LightningCLI's bookkeeping, not an argument
    vocoder.save_pretrained(tmp_path / "vocoder")
    config = json.loads((tmp_path / "vocoder" / "config.json").read_text())
    assert not any(key.startswith("_") for key in config["init_args"])
    assert VocoderInverter(tmp_path / "vocoder").generator.input.out_channels == 16


def test_wrong_number_of_mels_is_named(tmp_path) -> None:
    tiny_vocoder().save_pretrained(tmp_path / "vocoder")
    inverter = VocoderInverter(tmp_path / "vocoder")
    with pytest.raises(ValueError, match=r"\[B, 64, frames\], got \(1, 80, 10\)"):
        inverter.invert(torch.randn(1, 80, 10))
    with pytest.raises(ValueError, match="differs"):
        VocoderInverter(tmp_path / "vocoder", mel=LogMel(n_mels=80))


def test_bad_folders_name_the_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        VocoderInverter(tmp_path / "no_such_folder")
    folder = tmp_path / "vocoder"
    tiny_vocoder().save_pretrained(folder)
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="model.safetensors"):
        VocoderInverter(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        MelVocoder.from_pretrained(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        MelVocoder.from_pretrained(folder)
    for init_args, message in (
        ({"no_such_argument": 1}, "config.json.*no_such_argument"),
        ({"upsample_factors": [5, 4]}, "config.json.*hop_length=160"),
    ):
        config = {"class": "MelVocoder", "init_args": init_args}
        (folder / "config.json").write_text(json.dumps(config))
        with pytest.raises(ValueError, match=message):
            MelVocoder.from_pretrained(folder)


def test_weights_that_do_not_fit_the_config(tmp_path) -> None:
    tiny_vocoder(channels=32).save_pretrained(tmp_path / "a")
    tiny_vocoder(channels=16).save_pretrained(tmp_path / "b")
    (tmp_path / "b" / "model.safetensors").replace(tmp_path / "a" / "model.safetensors")
    with pytest.raises(ValueError, match="do not fit"):
        VocoderInverter(tmp_path / "a")
