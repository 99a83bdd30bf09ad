"""The mel VAE: shapes, the KL term, training on tones, and the pretrained folder."""

from __future__ import annotations

import json
import math

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from mmflow.losses import kl_to_standard_normal
from modalities.audio.vae import MelVAE

SAMPLE_RATE = 16000
CLIP_SAMPLES = 5120  # 32 mel frames


def tiny_vae(**overrides) -> MelVAE:
    config = {"channels": 8, "channel_multipliers": (1, 2, 2), "z_channels": 4, "lr": 3e-3}
    config.update(overrides)
    return MelVAE(**config)


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


def test_shapes_for_frame_counts_not_divisible_by_f() -> None:
    vae = tiny_vae().eval()
    log_mel = torch.randn(2, 64, 37)
    mean, logvar = vae.posterior(log_mel)
    assert mean.shape == logvar.shape == (2, 4, 16, 10) == (2, *vae.latent_shape(37))
    latents = vae.encode(log_mel)
    cropped = vae.decode(latents, num_frames=37)
    assert cropped.shape == log_mel.shape
    reconstruction, _, _ = vae(log_mel)
    assert reconstruction.shape == log_mel.shape
    with torch.no_grad():
        # Flow latents are latent_scale * mu (the scale is 1 at construction).
        torch.testing.assert_close(latents, mean)
        # 37 frames are padded with the log floor (silence) to 40, a multiple of f = 4.
        padded = torch.cat([log_mel, torch.full((2, 64, 3), math.log(1e-5))], dim=-1)
        torch.testing.assert_close(vae.posterior(padded)[0], mean)
        # decode divides by latent_scale and crops the padded output to num_frames.
        vae.latent_scale.fill_(0.5)
        full = vae.decode(0.5 * latents)
        assert full.shape == (2, 64, 40)
        torch.testing.assert_close(full[..., :37], cropped)


def test_downsample_factor_follows_the_levels() -> None:
    vae = tiny_vae(channel_multipliers=(1, 2, 2, 2), n_mels=40)
    assert vae.downsample_factor == 8
    assert vae.posterior(torch.randn(1, 40, 50))[0].shape == (1, 4, 5, 7)


def test_losses_combine_reconstruction_and_beta_kl() -> None:
    torch.manual_seed(0)
    vae = tiny_vae(beta=0.5, reconstruction="l2")
    log_mel = torch.randn(2, 64, 16)
    torch.manual_seed(1)
    losses = vae.losses(log_mel)
    torch.manual_seed(1)
    reconstruction, mean, logvar = vae(log_mel)
    expected = (reconstruction - log_mel).square().mean() + 0.5 * kl_to_standard_normal(
        mean, logvar
    ).mean()
    assert torch.allclose(losses["loss"], expected)
    assert torch.allclose(losses["mel_l1"], (reconstruction - log_mel).abs().mean())


def mel_l1(vae: MelVAE, waveforms: torch.Tensor) -> float:
    with torch.no_grad():
        log_mel = vae.mel(waveforms)
        reconstruction = vae.decode(vae.encode(log_mel), log_mel.shape[-1])
    return (reconstruction - log_mel).abs().mean().item()


def test_training_on_tones_halves_the_mel_l1(tmp_path) -> None:
    torch.manual_seed(0)
    tones = Tones()
    vae = tiny_vae(batch_key="mixture", latent_scale_batches=2)
    before = mel_l1(vae.eval(), 0.5 * tones.waveforms)
    vae.train()
    trainer = pl.Trainer(
        max_steps=150,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(vae, DataLoader(tones, batch_size=8, shuffle=True))
    after = mel_l1(vae.eval(), 0.5 * tones.waveforms)
    assert after < 0.5 * before, (before, after)
    assert vae.latent_scale.item() != 1.0
    latents = vae.encode(vae.mel(0.5 * tones.waveforms))
    assert latents.std().item() == pytest.approx(1.0, rel=0.2)


def test_estimate_latent_scale_whitens_the_latents() -> None:
    vae = tiny_vae().eval()
    batches = [{"target": torch.randn(4, CLIP_SAMPLES)} for _ in range(2)]
    scale = vae.estimate_latent_scale(batches)
    assert vae.latent_scale.item() == pytest.approx(scale)
    latents = torch.cat([vae.encode(vae.mel(b["target"])) for b in batches])
    assert latents.std().item() == pytest.approx(1.0, rel=1e-3)


def test_missing_batch_key_is_named() -> None:
    with pytest.raises(KeyError, match="batch_key"):
        tiny_vae(batch_key="source").training_step({"target": torch.zeros(1, CLIP_SAMPLES)}, 0)


def test_save_and_load_round_trip_bit_for_bit(tmp_path) -> None:
    torch.manual_seed(0)
    vae = tiny_vae(z_channels=8).eval()
    vae.latent_scale.fill_(0.37)
    vae.save_pretrained(tmp_path / "vae")
    loaded = MelVAE.from_pretrained(tmp_path / "vae")
    saved_state, loaded_state = vae.state_dict(), loaded.state_dict()
    assert saved_state.keys() == loaded_state.keys()
    assert all(torch.equal(saved_state[k], loaded_state[k]) for k in saved_state)
    log_mel = torch.randn(1, 64, 21)
    assert torch.equal(vae.encode(log_mel), loaded.encode(log_mel))
    assert not any(p.requires_grad for p in loaded.parameters())
    assert sorted(p.name for p in (tmp_path / "vae").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]


def test_bad_folders_name_the_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        MelVAE.from_pretrained(tmp_path / "no_such_folder")
    folder = tmp_path / "vae"
    tiny_vae().save_pretrained(folder)
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="model.safetensors"):
        MelVAE.from_pretrained(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        MelVAE.from_pretrained(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        MelVAE.from_pretrained(folder)
    bad_arguments = {"class": "MelVAE", "init_args": {"no_such_argument": 1}}
    (folder / "config.json").write_text(json.dumps(bad_arguments))
    with pytest.raises(ValueError, match="config.json.*no_such_argument"):
        MelVAE.from_pretrained(folder)


def test_weights_that_do_not_fit_the_config(tmp_path) -> None:
    tiny_vae(z_channels=4).save_pretrained(tmp_path / "a")
    tiny_vae(z_channels=8).save_pretrained(tmp_path / "b")
    (tmp_path / "b" / "model.safetensors").replace(tmp_path / "a" / "model.safetensors")
    with pytest.raises(ValueError, match="do not fit"):
        MelVAE.from_pretrained(tmp_path / "a")


def test_cli_bookkeeping_in_the_hyperparameters_is_not_saved(tmp_path) -> None:
    """``mmflow fit`` adds ``_class_path`` / ``_instantiator`` to the hyperparameters."""
    vae = MelVAE(channels=8, z_channels=2, export_dir=str(tmp_path / "elsewhere"))
    vae.hparams["_class_path"] = "modalities.audio.MelVAE"
    vae.hparams["_instantiator"] = "lightning.pytorch.cli.instantiate_module"
    vae.save_pretrained(tmp_path / "vae")
    config = json.loads((tmp_path / "vae" / "config.json").read_text())
    assert not {"_class_path", "_instantiator", "export_dir"} & set(config["init_args"])
    MelVAE.from_pretrained(tmp_path / "vae")
