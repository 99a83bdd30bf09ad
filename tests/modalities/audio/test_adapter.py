"""FlowSep's modality adapter: latents, mixture and query conditions, decoding, checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mmflow.modality import drop_conditions
from mmflow.nn import ChannelConcat, ContextConfig, MMDiT, Patchify2D
from mmflow.sources import ConditionSource, GaussianSource
from mmflow.training import FlowMatching
from modalities.audio.adapter import FlowSepAdapter
from modalities.audio.evaluators import si_sdr
from modalities.audio.mel import GriffinLimInverter, LogMel, MelInverter
from modalities.audio.vae import MelVAE
from tests.mmflow.training.toy import fit_one_batch

SAMPLE_RATE = 16000
SAMPLES = 6400  # 0.4 s: 40 mel frames, latent width 10


@pytest.fixture(scope="module")
def vae_path(tmp_path_factory) -> str:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vae")
    MelVAE(channels=8, z_channels=4).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def adapter(vae_path: str) -> FlowSepAdapter:
    return FlowSepAdapter(vae_path, class_names=["low", "high"])


def tones(frequencies: list[float], samples: int = SAMPLES) -> torch.Tensor:
    t = torch.arange(samples) / SAMPLE_RATE
    return torch.stack([0.5 * torch.sin(2 * math.pi * f * t) for f in frequencies])


def make_batch(samples: int = SAMPLES) -> dict:
    target = tones([220.0, 1760.0], samples)
    interferer = tones([1760.0, 220.0], samples) * 0.5
    return {
        "target": target,
        "interferer": interferer,
        "mixture": target + interferer,
        "class_index": torch.tensor([0, 1]),
        "caption": ["a low tone", "a high tone"],
    }


def tiny_network(adapter: FlowSepAdapter) -> nn.Module:
    z = adapter.vae.hparams.z_channels
    backbone = MMDiT(
        Patchify2D(in_channels=2 * z, patch_size=2),
        hidden_size=32,
        depth=2,
        num_heads=2,
        context={"query": ContextConfig(dim=384)},
        pooled_dim=384,
    )
    return ChannelConcat(backbone, key="mixture")


def test_encode_gives_target_latents_and_the_mixture_and_query_conditions(adapter) -> None:
    x1, cond = adapter.encode(make_batch())
    assert x1.shape == (2, 4, 16, 10)
    assert cond["mixture"].shape == x1.shape
    assert not torch.equal(cond["mixture"], x1)
    tokens, mask = cond["context"]["query"], cond["context_mask"]["query"]
    assert tokens.shape[:2] == mask.shape and tokens.shape[2] == 384
    assert cond["pooled"].shape == (2, 384)
    # x1 = E(mel(target)) and the mixture condition is E(mel(mixture)), row by row.
    batch = make_batch()
    with torch.no_grad():
        vae = adapter.vae
        torch.testing.assert_close(x1, vae.encode(vae.mel(batch["target"])))
        torch.testing.assert_close(cond["mixture"], vae.encode(vae.mel(batch["mixture"])))
    # Each query is encoded on its own: row 1 alone gives row 1; the two queries differ.
    alone = adapter.query_condition(["a high tone"])
    length = alone["context"]["query"].shape[1]
    torch.testing.assert_close(alone["pooled"][0], cond["pooled"][1])
    torch.testing.assert_close(alone["context"]["query"][0], tokens[1, :length])
    assert not torch.allclose(cond["pooled"][0], cond["pooled"][1])


def test_the_null_condition_drops_only_the_query(adapter) -> None:
    batch = make_batch()
    _, cond = adapter.encode(batch)
    null = adapter.null_condition(cond)
    assert "mixture" not in null  # kept as it is by dropout and by CFG
    assert null["context"]["query"].shape == cond["context"]["query"].shape
    assert null["context_mask"]["query"].sum(1).tolist() == [2, 2]
    _, empty = adapter.encode({**batch, "caption": ["", "  "]})
    mixed = drop_conditions(cond, null, torch.tensor([True, True]))
    for key in ("context", "context_mask"):
        torch.testing.assert_close(mixed[key]["query"][:, :2], empty[key]["query"][:, :2])
    torch.testing.assert_close(mixed["pooled"], empty["pooled"])
    torch.testing.assert_close(mixed["mixture"], cond["mixture"])


def test_decode_returns_waveforms_at_the_mixture_length(adapter) -> None:
    batch = make_batch(samples=4800)  # 30 frames: not a multiple of the VAE's factor 4
    x1, cond = adapter.encode(batch)
    waveforms = adapter.decode(x1, cond, batch)
    assert waveforms.shape == batch["mixture"].shape
    assert torch.isfinite(waveforms).all()
    # VAE decoder cropped to the mixture's 4800 / 160 = 30 frames, then the mixture-phase
    # inverter at the mixture's length.
    with torch.no_grad():
        log_mel = adapter.vae.decode(x1, 30)
        expected = adapter.inverter.invert(log_mel, batch["mixture"], 4800)
    torch.testing.assert_close(waveforms, expected)
    assert waveforms.abs().max() > 0


def test_mixture_phase_decoding_needs_the_batch(adapter) -> None:
    x1, cond = adapter.encode(make_batch())
    with pytest.raises(ValueError, match="mixture"):
        adapter.decode(x1, cond)


def test_griffin_lim_decodes_without_the_batch(vae_path) -> None:
    adapter = FlowSepAdapter(vae_path, inverter=GriffinLimInverter(n_iter=2), class_names=[])
    x1, cond = adapter.encode(make_batch())
    assert adapter.decode(x1, cond).shape == (2, 40 * 160)


def test_frozen_models_stay_out_of_the_flow_checkpoint(adapter) -> None:
    module = FlowMatching(adapter, tiny_network(adapter), ema_decay=None)
    keys = list(module.state_dict())
    assert keys and all(k.startswith("network.") for k in keys)
    assert not any(p.requires_grad for p in adapter.parameters())


def test_a_vocoder_with_other_mel_settings_is_refused(vae_path) -> None:
    class Learned(MelInverter):
        def __init__(self) -> None:
            super().__init__(LogMel(n_mels=80))
            self.layer = nn.Linear(1, 1)

    with pytest.raises(ValueError, match="n_mels"):
        FlowSepAdapter(vae_path, inverter=Learned())


def test_bad_batches_are_named(adapter) -> None:
    batch = make_batch()
    with pytest.raises(ValueError, match="captions"):
        adapter.encode({**batch, "caption": ["only one"]})
    with pytest.raises(KeyError, match="caption"):
        adapter.encode({k: v for k, v in batch.items() if k != "caption"})
    with pytest.raises(ValueError, match="mixture"):
        adapter.encode({**batch, "mixture": batch["mixture"][:, :100]})


def test_flow_matching_trains_validates_and_guides_with_the_adapter(adapter) -> None:
    torch.manual_seed(0)
    module = FlowMatching(adapter, tiny_network(adapter), ema_decay=None, cfg_scale=2.0, nfe=2)
    batch = make_batch()
    losses = fit_one_batch(module, batch)
    assert sum(losses[-5:]) < sum(losses[:5])
    module.eval()
    x1, cond = adapter.encode(batch)
    samples, nfe = module.generate(cond, torch.randn(x1.shape))
    assert nfe == 2 and samples.shape == x1.shape
    # The trained network is no longer zero and hears the query: guidance changes the samples.
    x0 = torch.randn(x1.shape, generator=torch.Generator().manual_seed(1))
    guided, _ = module.generate(cond, x0)
    unguided, _ = module.generate(cond, x0, cfg_scale=1.0)
    assert (guided - x0).abs().max() > 1e-3
    assert (guided - unguided).abs().max() > 1e-6
    waveforms = adapter.decode(samples, cond, batch)
    metrics = adapter.evaluators()
    for metric in metrics.values():
        metric.update(waveforms, batch)
    values = {k: v for m in metrics.values() for k, v in m.compute().items()}
    assert {"si_sdri", "si_sdri/low", "sdri/high", "mel_l1"} <= set(values)
    assert all(math.isfinite(float(v)) for v in values.values())
    improvement = si_sdr(waveforms, batch["target"]) - si_sdr(batch["mixture"], batch["target"])
    assert float(values["si_sdri"]) == pytest.approx(improvement.mean().item())
    assert float(values["si_sdri/low"]) == pytest.approx(improvement[0].item())


def test_a_clip_shorter_than_one_stft_window_is_refused_by_name(adapter) -> None:
    with pytest.raises(ValueError, match="too short"):
        adapter.encode(make_batch(samples=300))


def test_a_flow_from_the_mixture_starts_at_its_latent(vae_path) -> None:
    adapter = FlowSepAdapter(
        vae_path, class_names=["low", "high"], source=ConditionSource("mixture", noise_scale=0.5)
    )
    x1, cond = adapter.encode(make_batch())
    eps = torch.randn(x1.shape, generator=torch.Generator().manual_seed(3))
    x0 = adapter.source_like(x1, cond, torch.Generator().manual_seed(3))
    torch.testing.assert_close(x0, cond["mixture"] + 0.5 * eps)
    assert isinstance(FlowSepAdapter(vae_path).source, GaussianSource)


def test_cached_target_latents_are_the_encoded_ones_and_a_changed_clip_is_encoded_again(
    vae_path,
) -> None:
    cached = FlowSepAdapter(vae_path, class_names=["low", "high"], target_cache_size=3)
    plain = FlowSepAdapter(vae_path, class_names=["low", "high"])
    batch = make_batch()
    first, _ = cached.encode(batch)
    again, _ = cached.encode(batch)
    assert (cached.target_latents.hits, cached.target_latents.misses) == (2, 2)
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    torch.testing.assert_close(first, plain.encode(batch)[0], rtol=0, atol=0)
    quieter = {**batch, "target": batch["target"] * 0.5, "mixture": batch["mixture"] * 0.5}
    torch.testing.assert_close(cached.encode(quieter)[0], plain.encode(quieter)[0])
    assert cached.target_latents.misses == 4
    assert len(cached.target_latents.entries) == 3
    with pytest.raises(ValueError, match="target_cache_size"):
        FlowSepAdapter(vae_path, target_cache_size=-1)


def test_relative_decoding_of_the_mixture_latent_gives_back_the_mixture(vae_path) -> None:
    relative = FlowSepAdapter(vae_path, class_names=["low", "high"], relative_decoding=True)
    plain = FlowSepAdapter(vae_path, class_names=["low", "high"])
    batch = make_batch()
    _, cond = relative.encode(batch)
    # The estimate's decoding minus the mixture's decoding is zero: every band gain is 1.
    back = relative.decode(cond["mixture"], cond, batch)
    assert (si_sdr(back, batch["mixture"]) > 40).all()
    assert (si_sdr(plain.decode(cond["mixture"], cond, batch), batch["mixture"]) < 20).all()
    with pytest.raises(ValueError, match="relative_decoding needs the batch"):
        relative.decode(cond["mixture"], cond, None)
