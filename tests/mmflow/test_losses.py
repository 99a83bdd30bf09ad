"""Losses: closed-form values, masks, per-sample weights, pseudo-Huber limits, weighting."""

from __future__ import annotations

import math

import pytest
import torch

from mmflow.losses import (
    VelocityLoss,
    default_huber_c,
    kl_to_standard_normal,
    loss_weight,
    pseudo_huber,
    velocity_mse,
)


def test_mse_closed_form():
    pred = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    target = torch.tensor([[0.0, 0.0], [3.0, 1.0]])
    # per sample: (1 + 4)/2 = 2.5 and (9 + 1)/2 = 5
    torch.testing.assert_close(
        velocity_mse(pred, target, reduction="none"), torch.tensor([2.5, 5.0])
    )
    torch.testing.assert_close(velocity_mse(pred, target), torch.tensor(3.75))
    torch.testing.assert_close(
        velocity_mse(pred, target), torch.nn.functional.mse_loss(pred, target)
    )


def test_mse_with_token_mask_ignores_padding():
    generator = torch.Generator().manual_seed(0)
    pred, target = (
        torch.randn(3, 5, 4, generator=generator),
        torch.randn(3, 5, 4, generator=generator),
    )
    lengths = torch.tensor([5, 2, 3])
    mask = torch.arange(5)[None, :] < lengths[:, None]  # [B, L], True = real
    loss = velocity_mse(pred, target, mask=mask)
    changed = pred.clone()
    changed[~mask] = 1e6
    torch.testing.assert_close(velocity_mse(changed, target, mask=mask), loss)
    expected = torch.stack(
        [((pred[i, :n] - target[i, :n]) ** 2).mean() for i, n in enumerate(lengths)]
    )
    torch.testing.assert_close(velocity_mse(pred, target, mask=mask, reduction="none"), expected)
    torch.testing.assert_close(loss, expected.mean())


def test_all_ones_mask_equals_unmasked_and_float_mask_works():
    pred, target = torch.randn(4, 6, 2), torch.randn(4, 6, 2)
    plain = velocity_mse(pred, target)
    torch.testing.assert_close(
        velocity_mse(pred, target, mask=torch.ones(4, 6, dtype=torch.bool)), plain
    )
    torch.testing.assert_close(velocity_mse(pred, target, mask=torch.ones(4, 6)), plain)
    torch.testing.assert_close(velocity_mse(pred, target, mask=torch.ones(4, 6, 2)), plain)
    torch.testing.assert_close(
        pseudo_huber(pred, target, mask=torch.ones(4, 6)), pseudo_huber(pred, target)
    )


def test_fully_padded_sample_is_left_out_of_the_mean():
    pred, target = torch.randn(2, 3), torch.randn(2, 3)
    mask = torch.tensor([[True, True, True], [False, False, False]])
    torch.testing.assert_close(
        velocity_mse(pred, target, mask=mask), ((pred[0] - target[0]) ** 2).mean()
    )
    per_sample = velocity_mse(pred, target, mask=mask, reduction="none")
    assert per_sample[1].item() == 0.0 and torch.isfinite(per_sample).all()


def test_per_sample_weights():
    pred = torch.tensor([[1.0], [2.0], [0.0]])
    target = torch.zeros(3, 1)
    weight = torch.tensor([2.0, 0.5, 3.0])
    torch.testing.assert_close(
        velocity_mse(pred, target, weight=weight, reduction="none"), torch.tensor([2.0, 2.0, 0.0])
    )
    torch.testing.assert_close(velocity_mse(pred, target, weight=weight), torch.tensor(4.0 / 3))


def test_pseudo_huber_closed_form_and_default_c():
    pred = torch.tensor([[3.0, 4.0, 0.0, 0.0]])
    target = torch.zeros(1, 4)
    c = 0.00054 * math.sqrt(4)
    torch.testing.assert_close(pseudo_huber(pred, target), torch.tensor(math.sqrt(25 + c**2) - c))
    torch.testing.assert_close(pseudo_huber(pred, target, c=1.0), torch.tensor(math.sqrt(26.0) - 1))
    torch.testing.assert_close(
        default_huber_c(3 * 32 * 32), torch.tensor(0.00054 * math.sqrt(3072))
    )


def test_pseudo_huber_limits():
    generator = torch.Generator().manual_seed(1)
    target = torch.zeros(4, 8, dtype=torch.float64)
    small = 1e-7 * torch.randn(4, 8, generator=generator, dtype=torch.float64)
    c = 0.5
    squared_norm = (small**2).sum(1)
    torch.testing.assert_close(
        pseudo_huber(small, target, c=c, reduction="none"), squared_norm / (2 * c)
    )
    # MSE relation: sum of squares = d * mean square
    torch.testing.assert_close(
        pseudo_huber(small, target, c=c, reduction="none"),
        8 * velocity_mse(small, target, reduction="none") / (2 * c),
    )
    large = 1e4 * torch.randn(4, 8, generator=generator, dtype=torch.float64)
    norm = large.norm(dim=1)
    torch.testing.assert_close(
        pseudo_huber(large, target, c=c, reduction="none"), norm - c, rtol=1e-8, atol=1e-6
    )
    assert torch.allclose(pseudo_huber(large, target, reduction="none"), norm, rtol=1e-6)


def test_pseudo_huber_mask_uses_real_element_count():
    pred, target = torch.randn(2, 4, 3), torch.zeros(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    per_sample = pseudo_huber(pred, target, mask=mask, reduction="none")
    squared = (pred[0, :2] ** 2).sum()
    c = 0.00054 * math.sqrt(2 * 3)
    torch.testing.assert_close(per_sample[0], torch.sqrt(squared + c**2) - c)
    changed = pred.clone()
    changed[0, 2:] = 100.0
    torch.testing.assert_close(
        pseudo_huber(changed, target, mask=mask), pseudo_huber(pred, target, mask=mask)
    )


def test_loss_weights():
    t = torch.tensor([0.0, 0.25, 0.5, 0.9, 1.0], dtype=torch.float64)
    torch.testing.assert_close(loss_weight(t, "none"), torch.ones_like(t))
    torch.testing.assert_close(loss_weight(t, "cosmap"), 2 / (math.pi * (1 - 2 * t + 2 * t**2)))
    torch.testing.assert_close(loss_weight(t, "cosmap"), loss_weight(1 - t, "cosmap"))
    interior = t[1:-1]
    snr = (interior / (1 - interior)) ** 2
    expected = torch.minimum(snr, torch.tensor(5.0, dtype=torch.float64)) * (1 - interior) ** 2
    torch.testing.assert_close(loss_weight(interior, "min_snr", min_snr_gamma=5.0), expected)
    torch.testing.assert_close(loss_weight(t, "inverse_t", eps=1e-3)[1:], 1 / t[1:])
    assert loss_weight(t, "inverse_t", eps=1e-3)[0].item() == pytest.approx(1e3)
    with pytest.raises(ValueError, match="`kind`"):
        loss_weight(t, "snr_plus")


def test_velocity_loss_module():
    generator = torch.Generator().manual_seed(2)
    pred, target = (
        torch.randn(4, 3, 2, generator=generator),
        torch.randn(4, 3, 2, generator=generator),
    )
    t = torch.tensor([0.1, 0.4, 0.6, 0.9])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.bool)
    plain = VelocityLoss()
    torch.testing.assert_close(
        plain(pred, target, t, mask=mask), velocity_mse(pred, target, mask=mask)
    )
    weighted = VelocityLoss(weighting="cosmap")
    expected = velocity_mse(pred, target, mask=mask, weight=loss_weight(t, "cosmap"))
    torch.testing.assert_close(weighted(pred, target, t, mask=mask), expected)
    huber = VelocityLoss(kind="pseudo_huber", huber_c=0.1)
    torch.testing.assert_close(huber(pred, target, t), pseudo_huber(pred, target, c=0.1))
    assert huber(pred, target, t, reduction="none").shape == (4,)
    squared = ((pred - target) ** 2).flatten(1).sum(1)
    torch.testing.assert_close(
        huber(pred, target, t, reduction="none"), torch.sqrt(squared + 0.01) - 0.1
    )
    pred.requires_grad_(True)
    combined = VelocityLoss(kind="pseudo_huber", weighting="min_snr")(pred, target, t, mask=mask)
    combined.backward()
    assert torch.isfinite(pred.grad).all()
    expected = pseudo_huber(pred.detach(), target, mask=mask, weight=loss_weight(t, "min_snr"))
    torch.testing.assert_close(combined.detach(), expected)
    assert torch.equal(pred.grad[~mask], torch.zeros_like(pred.grad[~mask]))  # padding: no grad
    assert pred.grad[mask].abs().min() > 0


def test_bad_arguments_raise_value_error():
    pred = torch.randn(2, 3)
    with pytest.raises(ValueError, match="`target`"):
        velocity_mse(pred, torch.randn(2, 4))
    with pytest.raises(ValueError, match="`mask`"):
        velocity_mse(pred, pred, mask=torch.ones(3, 2))
    with pytest.raises(ValueError, match="`weight`"):
        velocity_mse(pred, pred, weight=torch.ones(3))
    with pytest.raises(ValueError, match="`reduction`"):
        velocity_mse(pred, pred, reduction="sum")
    with pytest.raises(ValueError, match="`c`"):
        pseudo_huber(pred, pred, c=0.0)
    with pytest.raises(ValueError, match="`kind`"):
        VelocityLoss(kind="l1")
    with pytest.raises(ValueError, match="`weighting`"):
        VelocityLoss(weighting="edm")
    with pytest.raises(ValueError, match="`t`"):
        VelocityLoss()(pred, pred, torch.rand(3))


def test_velocity_loss_constructs_from_yaml_via_jsonargparse():
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = jsonargparse.ArgumentParser()
    parser.add_argument("--loss", type=VelocityLoss)
    config = parser.parse_string(
        "loss:\n  class_path: mmflow.losses.VelocityLoss\n  init_args:\n    kind: pseudo_huber\n"
        "    weighting: min_snr\n"
    )
    loss = parser.instantiate(config).loss
    assert loss.kind == "pseudo_huber" and loss.weighting == "min_snr"


def test_kl_closed_form():
    mean = torch.tensor([0.0, 1.0, -2.0])
    logvar = torch.tensor([0.0, math.log(4.0), math.log(0.25)])
    expected = 0.5 * torch.tensor([0.0, 1 + 4 - 1 - math.log(4.0), 4 + 0.25 - 1 - math.log(0.25)])
    assert torch.allclose(kl_to_standard_normal(mean, logvar), expected)
