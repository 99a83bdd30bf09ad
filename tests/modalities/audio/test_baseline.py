"""The discriminative mask separator FlowSep is compared with."""

from __future__ import annotations

import math

import torch

from mmflow.nn import ContextConfig, MMDiT, Patchify2D
from modalities.audio.baseline import MaskSeparator

SAMPLE_RATE = 16000


def tones(frequencies: list[float], samples: int = 12800) -> torch.Tensor:
    t = torch.arange(samples) / SAMPLE_RATE
    return torch.stack([0.5 * torch.sin(2 * math.pi * f * t) for f in frequencies])


def make_separator(**settings) -> MaskSeparator:
    network = MMDiT(
        Patchify2D(in_channels=1, patch_size=8),
        hidden_size=32,
        depth=2,
        num_heads=2,
        context={"query": ContextConfig(dim=384)},
        pooled_dim=384,
    )
    return MaskSeparator(
        network,
        class_names=["low", "high"],
        optimizer=lambda params: torch.optim.AdamW(params, lr=3e-3),
        **settings,
    )


def make_batch() -> dict:
    low, high = tones([220.0, 220.0]), tones([1760.0, 1760.0])
    return {
        "target": torch.stack([low[0], high[1]]),
        "mixture": low + high,
        "class_index": torch.tensor([0, 1]),
        "caption": ["a low tone", "a high tone"],
    }


def test_the_estimate_is_the_masked_mixture_mel() -> None:
    mixture_log_mel = torch.log(torch.full((1, 64, 8), 0.5))
    mask = torch.full((1, 64, 8), 0.25)
    estimate = MaskSeparator.estimate(mixture_log_mel, mask)
    torch.testing.assert_close(estimate, torch.log(torch.full((1, 64, 8), 0.125)))


def test_an_untrained_separator_halves_the_mixture() -> None:
    """The backbone's zero-initialised output layer gives mask sigmoid(0) = 1/2 everywhere."""
    separator = make_separator()
    batch = make_batch()
    log_mel = separator.mel(batch["mixture"])
    mask = separator.predict_mask(log_mel, batch["caption"])
    torch.testing.assert_close(mask, torch.full_like(mask, 0.5))
    # The estimate is then the mixture's mel minus log 2 (at least the log floor 1e-5).
    with torch.no_grad():
        estimate = separator(batch["mixture"], batch["caption"])
    expected = (log_mel + math.log(0.5)).clamp_min(math.log(1e-5))
    torch.testing.assert_close(estimate, expected, atol=1e-5, rtol=1e-5)


def test_training_separates_by_query() -> None:
    """Same mixture, two queries: the separator learns which tone each one asks for."""
    torch.manual_seed(0)
    separator = make_separator()
    batch = make_batch()
    optimizer = separator.configure_optimizers()
    first = separator.loss(batch).item()
    for _ in range(60):
        loss = separator.loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5 * first
    separator.eval()
    waveforms = separator.separate(batch)
    assert waveforms.shape == batch["mixture"].shape
    # Both rows hold the same mixture, so the mask depends on the query alone: swapping the
    # queries swaps the masks, and the two queries ask for different masks.
    with torch.no_grad():
        log_mel = separator.mel(batch["mixture"])
        masks = separator.predict_mask(log_mel, batch["caption"])
        swapped = separator.predict_mask(log_mel, batch["caption"][::-1])
    torch.testing.assert_close(swapped, masks.flip(0))
    assert (masks[0] - masks[1]).abs().max() > 0.1
    metrics = separator._evaluators
    metrics["si_sdri"].update(waveforms, batch)
    assert metrics["si_sdri"].compute()["si_sdri"] > 6.0


def test_the_text_encoder_stays_out_of_the_checkpoint() -> None:
    separator = make_separator()
    assert all(key.startswith("network.") for key in separator.state_dict())


def test_the_separator_takes_an_optimizer_and_a_per_step_scheduler() -> None:
    """The same optimizer and scheduler settings as FlowMatching: the optimizer trains the
    network's parameters and the scheduler steps every optimizer step."""
    separator = make_separator(
        scheduler=lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=10)
    )
    configured = separator.configure_optimizers()
    optimizer = configured["optimizer"]
    assert optimizer.param_groups[0]["lr"] == 3e-3
    assert {id(p) for p in optimizer.param_groups[0]["params"]} == {
        id(p) for p in separator.network.parameters()
    }
    assert configured["lr_scheduler"]["interval"] == "step"
    assert configured["lr_scheduler"]["scheduler"].T_max == 10
