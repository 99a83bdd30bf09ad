"""The gesture adapter: latents on a time x part grid, speech tokens per latent frame, a seed
from the window's start, silence as the null condition, decoding back to motion; and one
FlowMatching module trains and guides on it with an axial-attention MM-DiT."""

import pytest
import torch

from mmflow.generation import GenerationDefaults
from mmflow.hub import PretrainedFlow
from mmflow.nn import ChannelConcat, ContextConfig, MMDiT, Patchify2D, PositionConfig
from mmflow.training import FlowMatching
from modalities.gesture.adapter import SPEECH_STREAM, GestureAdapter
from modalities.gesture.generation import generate_recording
from modalities.gesture.skeleton import default_skeleton
from tests.mmflow.training.toy import fit_one_batch

from .test_autoencoder import motion_batch, small_autoencoder


@pytest.fixture(scope="module")
def autoencoder_folder(tmp_path_factory):
    torch.manual_seed(0)
    model = small_autoencoder(num_quantizers=2)
    model.measure_statistics([motion_batch(frames=32)], 1)
    return model.save_pretrained(tmp_path_factory.mktemp("rvqvae"))


def window_batch(batch: int = 4, frames: int = 32) -> dict:
    motion = motion_batch(batch, frames)
    speech = torch.randn(batch, frames, 5, generator=torch.Generator().manual_seed(1))
    return {**motion, "speech": speech}


def test_encode_lays_latents_on_a_time_by_part_grid_with_speech_and_seed(autoencoder_folder):
    adapter = GestureAdapter(str(autoencoder_folder), seed_frames=2).eval()
    batch = window_batch()
    x1, cond = adapter.encode(batch)
    assert x1.shape == (4, 8, 8, 3)  # channels, 32 / 4 latent frames, 3 parts
    latents = adapter.autoencoder.encode(batch["rotations"], batch["root"])
    torch.testing.assert_close(x1, latents.permute(0, 3, 1, 2))
    speech = cond["context"][SPEECH_STREAM]
    assert speech.shape == (4, 8, 20)  # 4 motion frames of 5 features per latent frame
    torch.testing.assert_close(speech[:, 1, 5:10], batch["speech"][:, 5])
    seed = cond["pooled"]
    assert seed.shape == (4, adapter.seed_dim()) == (4, 2 * 3 * 8 + 1)
    torch.testing.assert_close(seed[:, :-1], x1[:, :, :2].flatten(1))
    assert (seed[:, -1] == 1).all()


def test_the_null_condition_silences_the_speech_and_keeps_the_seed(autoencoder_folder):
    adapter = GestureAdapter(str(autoencoder_folder)).eval()
    _, cond = adapter.encode(window_batch())
    null = adapter.null_condition(cond)
    assert not null["context"][SPEECH_STREAM].any()
    assert torch.equal(null["pooled"], cond["pooled"])


def test_channel_speech_lies_on_the_latent_grid_of_every_part(autoencoder_folder):
    adapter = GestureAdapter(str(autoencoder_folder), speech_input="channels").eval()
    batch = window_batch()
    x1, cond = adapter.encode(batch)
    grid = cond[SPEECH_STREAM]
    assert "context" not in cond and grid.shape == (4, 20, 8, 3)
    for part in range(3):  # latent frame 1 holds motion frames 4..7; frame 5 is its second
        torch.testing.assert_close(grid[:, 5:10, 1, part], batch["speech"][:, 5])
    null = adapter.null_condition(cond)
    assert not null[SPEECH_STREAM].any() and torch.equal(null["pooled"], cond["pooled"])
    network = ChannelConcat(
        MMDiT(Patchify2D(in_channels=adapter.latent_dim + 20, patch_size=1), hidden_size=16,
              depth=1, num_heads=2, pooled_dim=adapter.seed_dim(), x_attention="axial"),
        key=SPEECH_STREAM,
    )  # fmt: skip
    assert network(torch.randn_like(x1), torch.rand(4), **cond).shape == x1.shape
    with pytest.raises(ValueError, match="speech_input"):
        GestureAdapter(str(autoencoder_folder), speech_input="tokens")


def test_training_drops_the_seed_at_its_rate(autoencoder_folder):
    adapter = GestureAdapter(str(autoencoder_folder), seed_dropout=0.5).train()
    torch.manual_seed(0)
    _, cond = adapter.encode(window_batch(batch=400, frames=8))
    dropped = (cond["pooled"] == 0).all(dim=1).float().mean()
    assert 0.4 < float(dropped) < 0.6


def test_decode_gives_motion_that_starts_at_the_batch_root(autoencoder_folder):
    adapter = GestureAdapter(str(autoencoder_folder)).eval()
    batch = window_batch()
    x1, cond = adapter.encode(batch)
    motion = adapter.decode(x1, cond, batch)
    assert motion["rotations"].shape == (4, 32, 25, 6) and motion["root"].shape == (4, 32, 3)
    torch.testing.assert_close(motion["root"][:, 0], batch["root"][:, 0])


def test_bad_inputs_are_named(autoencoder_folder, tmp_path):
    adapter = GestureAdapter(str(autoencoder_folder))
    batch = window_batch()
    with pytest.raises(KeyError, match="`speech`"):
        adapter.encode({k: v for k, v in batch.items() if k != "speech"})
    with pytest.raises(ValueError, match="multiple of 4 frames"):
        adapter.speech_tokens(batch["speech"][:, :30])
    continuous = small_autoencoder(num_quantizers=0).save_pretrained(tmp_path / "continuous")
    with pytest.raises(ValueError, match="continuous auto-encoder"):
        GestureAdapter(str(continuous))


def test_flow_matching_trains_and_guides_on_the_adapter(autoencoder_folder):
    torch.manual_seed(0)
    adapter = GestureAdapter(str(autoencoder_folder))
    network = MMDiT(
        Patchify2D(in_channels=adapter.latent_dim, patch_size=1),
        hidden_size=32, depth=2, num_heads=2,
        positions=PositionConfig("rope"),
        context={SPEECH_STREAM: ContextConfig(dim=adapter.speech_dim(5), positions=PositionConfig("rope"))},
        pooled_dim=adapter.seed_dim(), x_attention="axial",
    )  # fmt: skip
    module = FlowMatching(adapter, network, ema_decay=None, cfg_scale=2.0, nfe=2)
    batch = window_batch()
    losses = fit_one_batch(module, batch)
    assert sum(losses[-5:]) < sum(losses[:5])
    module.eval()
    x1, cond = adapter.encode(batch)
    samples, nfe = module.generate(cond, torch.randn(x1.shape))
    assert nfe == 2 and samples.shape == x1.shape
    assert default_skeleton().num_joints == adapter.decode(samples, cond)["rotations"].shape[2]


def test_a_long_recording_is_generated_window_by_window_with_seeds(autoencoder_folder):
    torch.manual_seed(0)
    adapter = GestureAdapter(str(autoencoder_folder)).eval()
    network = MMDiT(
        Patchify2D(in_channels=adapter.latent_dim, patch_size=1), hidden_size=16, depth=1,
        num_heads=2, context={SPEECH_STREAM: ContextConfig(dim=adapter.speech_dim(5))},
        pooled_dim=adapter.seed_dim(),
    )  # fmt: skip
    flow = PretrainedFlow(network.eval(), adapter, GenerationDefaults(sampler="euler", nfe=2))
    seen = []
    generate = flow.generate

    def recording_generate(cond, x0, **kwargs):
        result = generate(cond, x0, **kwargs)
        seen.append((cond["pooled"].clone(), result.samples.clone(), cond["context"]))
        return result

    flow.generate = recording_generate
    speech = torch.randn(70, 5)  # windows of 32 frames starting 28 apart, the last padded
    motion = generate_recording(
        flow, speech, window=32, generator=torch.Generator().manual_seed(0)
    )
    assert motion["rotations"].shape == (70, 25, 6) and motion["root"].shape == (70, 3)
    assert len(seen) == 3
    assert not seen[0][0].any()  # the first window has no seed
    for (seed, _, _), (_, before, _) in zip(seen[1:], seen[:-1]):
        torch.testing.assert_close(seed, adapter.seed_vector(before, 1, before))
    # each window overlaps the one before by its seed (one latent frame of 4 motion frames)
    torch.testing.assert_close(seen[1][2][SPEECH_STREAM][0, 0], speech[28:32].flatten())
    torch.testing.assert_close(seen[2][2][SPEECH_STREAM][0, 0], speech[56:60].flatten())
    assert not seen[2][2][SPEECH_STREAM][0, 4:].any()  # frames 72 on: silence
    with pytest.raises(ValueError, match="multiple of 4"):
        generate_recording(flow, speech, window=30)
