"""The image degradations (inpainting, super-resolution, Gaussian blur) and the core's posterior
samplers run with them, against closed-form answers.

Operators are checked against their dense matrices (adjoint, Moore-Penrose pseudo-inverse,
Tikhonov inverse). Samplers run on Gaussian priors whose velocity is exact, where the
posterior of a linear-Gaussian measurement is known (the closed forms are those of
``tests/mmflow/sampling/test_inverse.py``, which tests the samplers on the core's operators).
"""

import pytest
import torch
import torch.nn.functional as F

from mmflow.sampling.inverse import project_to_noise_level
from modalities.image import GaussianDeblur, Inpainting, SuperResolution
from modalities.image.operators import gaussian_kernel_1d
from tests.mmflow.sampling.test_inverse import (
    DT,
    METHODS,
    check_adjoint_satisfies_the_inner_product_identity,
    check_correction_is_the_exact_posterior_mean,
    check_final_projection_ends_at_the_noise_level,
    check_many_samples_approach_the_closed_form_posterior,
    check_noiseless_results_reproduce_the_measurement,
    check_norm_bound_bounds_the_spectral_norm,
    check_one_unit_gradient_step_equals_the_projection,
    check_pseudo_inverse_is_the_moore_penrose_inverse,
    check_regularized_inverse_is_the_tikhonov_formula,
    dense,
    rand,
)


def make_operator(name: str, size: int = 8):
    if name == "box":
        return Inpainting.centre_box((size, size), (size // 2, size // 2 + 1))
    if name == "random_pixels":
        return Inpainting.random_pixels((size, size), 0.4, torch.Generator().manual_seed(1))
    if name == "per_channel_mask":
        return Inpainting(
            torch.rand(2, size, size, generator=torch.Generator().manual_seed(2)) > 0.3
        )
    if name == "super_resolution":
        return SuperResolution(2)
    if name == "blur_circular":
        return GaussianDeblur(5, 0.8, "circular", tikhonov=0.0)
    if name == "blur_reflect":
        return GaussianDeblur(5, 0.8, "reflect", tikhonov=0.0, cg_iterations=200)
    raise KeyError(name)


OPERATORS = [
    "box",
    "random_pixels",
    "per_channel_mask",
    "super_resolution",
    "blur_circular",
    "blur_reflect",
]


@pytest.mark.parametrize("name", OPERATORS)
def test_operator_identities(name):
    """Adjoint, Moore-Penrose pseudo-inverse, Tikhonov inverse and norm bound (the reflect
    blur's bound is the Schur bound, an upper bound only)."""
    operator = make_operator(name)
    check_adjoint_satisfies_the_inner_product_identity(operator)
    check_pseudo_inverse_is_the_moore_penrose_inverse(operator)
    check_regularized_inverse_is_the_tikhonov_formula(operator)
    check_norm_bound_bounds_the_spectral_norm(operator, tight=name != "blur_reflect")


def test_super_resolution_pseudo_inverse_is_nearest_upsampling_and_a_right_inverse():
    operator = SuperResolution(4)
    y = rand(2, 3, 7, 7)
    upsampled = operator.pseudo_inverse(y)
    torch.testing.assert_close(upsampled, F.interpolate(y, scale_factor=4, mode="nearest"))
    torch.testing.assert_close(operator.forward(upsampled), y)  # A A^+ = I


def test_blur_pseudo_inverse_with_tikhonov_is_the_damped_least_squares_solution():
    for padding in ("circular", "reflect"):
        operator = GaussianDeblur(5, 1.0, padding, tikhonov=1e-2, cg_iterations=200)
        matrix = dense(operator, (1, 8, 8))
        y = rand(2, 1, 8, 8)
        normal = matrix.T @ matrix + 1e-2 * torch.eye(64, dtype=DT)
        expected = torch.linalg.solve(normal, matrix.T @ y.reshape(2, -1).T).T
        torch.testing.assert_close(
            operator.pseudo_inverse(y).reshape(2, -1), expected, rtol=1e-8, atol=1e-9
        )


def test_circular_blur_is_diagonal_in_the_dft():
    operator = GaussianDeblur(7, 1.3, "circular")
    x = rand(2, 3, 8, 12)
    transfer = operator.transfer_function((8, 12), x)
    expected = torch.fft.irfft2(torch.fft.rfft2(x) * transfer, s=(8, 12))
    torch.testing.assert_close(operator.forward(x), expected)
    assert float(transfer[0, 0]) == pytest.approx(1.0)


def test_gaussian_kernel_is_normalised_and_symmetric():
    kernel = gaussian_kernel_1d(7, 1.3, DT)
    assert float(kernel.sum()) == pytest.approx(1.0, abs=1e-15)
    torch.testing.assert_close(kernel, kernel.flip(0))
    assert int(kernel.argmax()) == 3


def test_inpainting_masks_hide_what_they_say():
    box = Inpainting.box((6, 6), 1, 2, 3, 4)
    assert int((~box.mask).sum()) == 12 and not bool(box.mask[1:4, 2:6].any())
    half = Inpainting.box((28, 28), 0, 14, 28, 14)
    assert bool(half.mask[:, :14].all()) and not bool(half.mask[:, 14:].any())
    y = box.forward(rand(2, 3, 6, 6))
    assert y.shape == (2, 3, 36 - 12)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: SuperResolution(0), "factor"),
        (lambda: GaussianDeblur(4), "kernel_size"),
        (lambda: GaussianDeblur(5, padding="zeros"), "padding"),
        (lambda: GaussianDeblur(5, blur_std=0.0), "blur_std"),
        (lambda: Inpainting(torch.ones(4, 4)), "mask"),
        (lambda: Inpainting.box((4, 4), 2, 2, 3, 1), "outside"),
        (lambda: SuperResolution(3).forward(torch.zeros(1, 1, 8, 8)), "divisible"),
        (lambda: Inpainting.centre_box((8, 8), (2, 2)).forward(torch.zeros(1, 1, 6, 6)), "mask"),
        (lambda: GaussianDeblur(9, padding="reflect").forward(torch.zeros(1, 1, 4, 4)), "radius"),
        (lambda: SuperResolution(2).measure(torch.zeros(1, 1, 2, 2), -1.0), "noise_std"),
    ],
)
def test_bad_operator_arguments_raise_value_errors(build, message):
    with pytest.raises(ValueError, match=message):
        build()


# -- the core's samplers with image operators ------------------------------------------------


@pytest.mark.parametrize("name", ["box", "super_resolution", "blur_circular"])
@pytest.mark.parametrize("method", METHODS)
def test_correction_from_x_t_is_the_exact_posterior_mean_for_isotropic_gaussian_data(name, method):
    check_correction_is_the_exact_posterior_mean(make_operator(name), method)


@pytest.mark.parametrize("name", ["box", "super_resolution", "blur_circular"])
def test_mean_and_variance_of_many_samples_approach_the_closed_form_posterior(name):
    operator = GaussianDeblur(3, 0.7, tikhonov=0.0) if name == "blur_circular" else None
    check_many_samples_approach_the_closed_form_posterior(operator or make_operator(name, size=4))


@pytest.mark.parametrize("name", OPERATORS)
@pytest.mark.parametrize("method", METHODS)
def test_noiseless_results_reproduce_the_measurement(name, method):
    check_noiseless_results_reproduce_the_measurement(make_operator(name, size=8), method)


@pytest.mark.parametrize("name", ["box", "super_resolution", "blur_circular"])
def test_final_projection_ends_at_the_noise_level(name):
    check_final_projection_ends_at_the_noise_level(make_operator(name))


def test_projection_inside_the_noise_ball_changes_nothing():
    operator = SuperResolution(2)
    x = rand(2, 1, 4, 4)
    y = operator.forward(x) + 1e-3 * rand(2, 1, 2, 2, seed=1)
    torch.testing.assert_close(project_to_noise_level(operator, x, y, noise_std=0.1), x)


@pytest.mark.parametrize("name", ["box", "super_resolution"])
@pytest.mark.parametrize("noise_std", [0.0, 0.2])
def test_one_unit_gradient_step_equals_the_projection_on_tight_frames(name, noise_std):
    check_one_unit_gradient_step_equals_the_projection(make_operator(name), noise_std)
