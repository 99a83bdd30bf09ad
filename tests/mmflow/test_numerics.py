"""Numerical helpers of the core against answers known in closed form."""

import pytest
import torch

from mmflow.numerics import first_non_finite, gaussian_sample, inverse_std, invert_increasing


def test_invert_increasing_solves_a_cube():
    y = torch.tensor([0.0, 0.125, 0.5, 1.0])
    torch.testing.assert_close(invert_increasing(lambda t: t**3, y), y ** (1 / 3))


def test_inverse_std_pools_chunks_of_any_shape():
    """Values -3, -1, 1, 3 plus an offset of 10: mean 10, variance (9 + 1 + 1 + 9) / 4 = 5."""
    chunks = [torch.tensor([7.0, 9.0]), torch.tensor([[11.0], [13.0]])]
    assert inverse_std(iter(chunks)) == pytest.approx(5**-0.5)


def test_inverse_std_of_nothing_names_its_source():
    with pytest.raises(ValueError, match="my batches yielded no values"):
        inverse_std([], source="my batches")


def test_gaussian_sample_has_the_moments_and_the_gradients_of_the_closed_form():
    mean = torch.full((200_000,), 2.0, requires_grad=True)
    logvar = torch.full((200_000,), 2 * torch.log(torch.tensor(3.0)).item(), requires_grad=True)
    sample = gaussian_sample(mean, logvar, torch.Generator().manual_seed(0))
    assert sample.mean().item() == pytest.approx(2.0, abs=0.03)
    assert sample.std().item() == pytest.approx(3.0, abs=0.03)
    sample.sum().backward()  # d sample / d mean = 1, d sample / d logvar = (sample - mean) / 2
    torch.testing.assert_close(mean.grad, torch.ones(200_000))
    torch.testing.assert_close(logvar.grad, (sample.detach() - 2.0) / 2)


def test_first_non_finite_names_the_first_bad_floating_tensor_and_skips_integers():
    finite = {"a": torch.ones(3), "count": torch.tensor([2**62])}
    assert first_non_finite(finite) is None
    assert first_non_finite({}) is None
    bad = {
        "a": torch.ones(2),
        "b": torch.tensor([1.0, float("inf")]),
        "c": torch.tensor([float("nan")]),
    }
    assert first_non_finite(bad) == "b"
