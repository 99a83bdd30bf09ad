"""Degradation operators and flow-prior posterior samplers against closed-form answers.

Operators are checked against their dense matrices (adjoint, Moore-Penrose pseudo-inverse,
Tikhonov inverse). Samplers run on Gaussian priors whose velocity is exact
(:class:`GaussianLinearFlow`), where the posterior of a linear-Gaussian measurement is known.
"""

import ast
import inspect
import math

import pytest
import torch
import torch.nn.functional as F

from mmflow.sampling import inverse, sample
from mmflow.sampling.analytic import GaussianLinearFlow
from mmflow.sampling.inverse import (
    Denoising,
    GaussianDeblur,
    Inpainting,
    SuperResolution,
    posterior_variance,
    project_to_noise_level,
    solve_inverse_problem,
)

DT = torch.float64


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
    if name == "denoising":
        return Denoising()
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
    "denoising",
    "blur_circular",
    "blur_reflect",
]


def dense(operator, image_shape) -> torch.Tensor:
    """The matrix of ``operator`` on flattened images of ``image_shape`` (C, H, W)."""
    n = math.prod(image_shape)
    basis = torch.eye(n, dtype=DT).reshape(n, *image_shape)
    return operator.forward(basis).reshape(n, -1).T


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


@pytest.mark.parametrize("name", OPERATORS)
def test_adjoint_satisfies_the_inner_product_identity(name):
    operator = make_operator(name)
    x = rand(3, 2, 8, 8)
    y = rand(*operator.forward(x).shape, seed=1)
    lhs = (operator.forward(x) * y).sum()
    rhs = (x * operator.adjoint(y)).sum()
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", OPERATORS)
def test_pseudo_inverse_is_the_moore_penrose_inverse(name):
    operator = make_operator(name)
    matrix = dense(operator, (2, 8, 8))
    x = rand(3, 2, 8, 8)
    y = rand(*operator.forward(x).shape, seed=1)
    expected = y.reshape(3, -1) @ torch.linalg.pinv(matrix).T
    torch.testing.assert_close(
        operator.pseudo_inverse(y).reshape(3, -1), expected, rtol=1e-8, atol=1e-9
    )
    # A A^+ A = A
    torch.testing.assert_close(
        operator.forward(operator.pseudo_inverse(operator.forward(x))),
        operator.forward(x),
        rtol=1e-8,
        atol=1e-9,
    )


@pytest.mark.parametrize("name", OPERATORS)
def test_regularized_inverse_is_the_tikhonov_formula(name):
    operator = make_operator(name)
    matrix = dense(operator, (2, 8, 8))
    damping = 0.3
    y = rand(*operator.forward(rand(3, 2, 8, 8)).shape, seed=1)
    gram = matrix @ matrix.T + damping * torch.eye(matrix.shape[0], dtype=DT)
    expected = torch.linalg.solve(gram, y.reshape(3, -1).T).T @ matrix
    torch.testing.assert_close(
        operator.regularized_inverse(y, damping).reshape(3, -1), expected, rtol=1e-9, atol=1e-10
    )


@pytest.mark.parametrize("name", OPERATORS)
def test_norm_bound_bounds_the_spectral_norm(name):
    operator = make_operator(name)
    exact = float(torch.linalg.matrix_norm(dense(operator, (2, 8, 8)), 2) ** 2)
    bound = operator.norm_bound(torch.zeros(1, 2, 8, 8, dtype=DT))
    assert bound >= exact - 1e-12
    if name != "blur_reflect":
        assert bound == pytest.approx(exact, rel=1e-12)


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
        (lambda: Denoising().measure(torch.zeros(1, 1, 2, 2), -1.0), "noise_std"),
    ],
)
def test_bad_operator_arguments_raise_value_errors(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def isotropic_prior(image_shape, std=0.7, seed=3):
    mean = rand(*image_shape, seed=seed)
    return GaussianLinearFlow(mean, torch.full(image_shape, std, dtype=DT))


def exact_posterior_mean(prior, operator, t, x_t, y, noise_std):
    """E[x1 | x_t, y] from the joint Gaussian of (x1, x_t, y), with dense matrices."""
    image_shape = tuple(prior.mean.shape)
    n = math.prod(image_shape)
    matrix = dense(operator, image_shape)
    m = matrix.shape[0]
    s2 = float(prior.std.flatten()[0]) ** 2
    eye_n, eye_m = torch.eye(n, dtype=DT), torch.eye(m, dtype=DT)
    cross = torch.cat([t * s2 * eye_n, s2 * matrix.T], dim=1)
    joint = torch.cat(
        [
            torch.cat([(t**2 * s2 + (1 - t) ** 2) * eye_n, t * s2 * matrix.T], dim=1),
            torch.cat([t * s2 * matrix, s2 * matrix @ matrix.T + noise_std**2 * eye_m], dim=1),
        ]
    )
    mean = prior.mean.reshape(-1)
    observed = torch.cat([x_t.reshape(len(x_t), -1), y.reshape(len(y), -1)], dim=1)
    centred = observed - torch.cat([t * mean, matrix @ mean])
    return (mean + torch.linalg.solve(joint, centred.T).T @ cross.T).reshape(x_t.shape)


@pytest.mark.parametrize("name", ["box", "super_resolution", "blur_circular", "denoising"])
@pytest.mark.parametrize("method", ["projection", "gradient"])
def test_correction_from_x_t_is_the_exact_posterior_mean_for_isotropic_gaussian_data(name, method):
    """One step from x_t straight to t = 1 returns the corrected x1: E[x1 | x_t, y] exactly."""
    prior = isotropic_prior((2, 8, 8))
    operator = make_operator(name)
    t, noise_std = 0.6, 0.3
    x1 = prior.mean + prior.std * rand(4, 2, 8, 8, seed=4)
    x_t = t * x1 + (1 - t) * rand(4, 2, 8, 8, seed=5)
    y = operator.measure(x1, noise_std, torch.Generator().manual_seed(6))
    options = {"data_std": 0.7, "final_projection": False}
    if method == "gradient":
        options["gradient_steps"] = 200
    result = solve_inverse_problem(
        prior, x_t, operator, y, method, grid=[t, 1.0], noise_std=noise_std, solver_options=options
    )
    expected = exact_posterior_mean(prior, operator, t, x_t, y, noise_std)
    torch.testing.assert_close(result.samples, expected, rtol=1e-9, atol=1e-9)
    assert result.nfe == 1


def test_posterior_variance_is_the_conditional_variance_of_gaussian_data():
    t = torch.tensor([0.0, 0.3, 0.9], dtype=DT)
    s = 0.7
    expected = s**2 - (t * s**2) ** 2 / (t**2 * s**2 + (1 - t) ** 2)
    torch.testing.assert_close(posterior_variance(t, s), expected)


def test_noiseless_projection_fills_the_null_space_with_the_prior_flow():
    """Diagonal prior, box inpainting: hidden pixels follow the plain Euler flow, seen ones = y."""
    image_shape = (1, 4, 4)
    prior = GaussianLinearFlow(rand(*image_shape, seed=7), 0.4 + rand(*image_shape, seed=8).abs())
    operator = Inpainting.centre_box((4, 4), (2, 2))
    x0 = rand(16, *image_shape, seed=9)
    y = operator.forward(prior.flow(rand(16, *image_shape, seed=10), 1.0))
    result = solve_inverse_problem(prior, x0, operator, y, "projection", nfe=12)
    unconditional = sample(prior, x0, method="euler", nfe=12).samples
    hidden = ~operator.mask
    torch.testing.assert_close(result.samples[..., hidden], unconditional[..., hidden])
    torch.testing.assert_close(operator.forward(result.samples), y, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["box", "super_resolution", "blur_circular", "denoising"])
def test_mean_and_variance_of_many_samples_approach_the_closed_form_posterior(name):
    """Isotropic Gaussian data, noisy measurement, "corrected" noise: exact posterior flow."""
    image_shape, count, noise_std, std = (1, 4, 4), 4000, 0.3, 0.7
    prior = isotropic_prior(image_shape, std)
    operator = GaussianDeblur(3, 0.7, tikhonov=0.0) if name == "blur_circular" else None
    operator = operator or make_operator(name, size=4)
    x1 = prior.mean + std * rand(1, *image_shape, seed=11)
    y = operator.measure(x1, noise_std, torch.Generator().manual_seed(12))
    y = y.expand(count, *y.shape[1:])
    result = solve_inverse_problem(
        prior,
        rand(count, *image_shape, seed=13),
        operator,
        y,
        "projection",
        nfe=128,
        noise_std=noise_std,
        solver_options={"data_std": std, "noise_estimate": "corrected", "final_projection": False},
    )
    matrix = dense(operator, image_shape)
    precision = matrix.T @ matrix / noise_std**2 + torch.eye(16, dtype=DT) / std**2
    covariance = torch.linalg.inv(precision)
    mean = covariance @ (
        matrix.T @ y[0].reshape(-1) / noise_std**2 + prior.mean.reshape(-1) / std**2
    )
    samples = result.samples.reshape(count, -1)
    spread = covariance.diagonal().sqrt()
    assert bool(((samples.mean(0) - mean).abs() < 5 * spread / math.sqrt(count)).all())
    torch.testing.assert_close(samples.var(0), covariance.diagonal(), rtol=0.15, atol=0)


def test_noiseless_mean_of_many_samples_is_the_conditional_mean_for_a_diagonal_prior():
    image_shape, count = (1, 4, 4), 4000
    std = 0.4 + rand(*image_shape, seed=14).abs()
    prior = GaussianLinearFlow(rand(*image_shape, seed=15), std)
    operator = Inpainting.random_pixels((4, 4), 0.5, torch.Generator().manual_seed(16))
    y = operator.forward(prior.flow(rand(1, *image_shape, seed=17), 1.0)).expand(count, -1, -1)
    result = solve_inverse_problem(prior, rand(count, *image_shape, seed=18), operator, y, nfe=32)
    expected = operator.adjoint(y[:1]) + ~operator.mask * prior.mean
    error = (result.samples.mean(0, keepdim=True) - expected).abs()
    assert bool((error <= 5 * std / math.sqrt(count)).all())


@pytest.mark.parametrize("name", OPERATORS)
@pytest.mark.parametrize("method", ["projection", "gradient"])
def test_noiseless_results_reproduce_the_measurement(name, method):
    operator = make_operator(name, size=8)
    prior = isotropic_prior((2, 8, 8))
    y = operator.forward(prior.flow(rand(3, 2, 8, 8, seed=19), 1.0))
    result = solve_inverse_problem(prior, rand(3, 2, 8, 8, seed=20), operator, y, method, nfe=8)
    residual = (operator.forward(result.samples) - y).flatten(1).norm(dim=1)
    assert bool((residual < 1e-8).all())


@pytest.mark.parametrize("name", ["box", "super_resolution", "blur_circular", "denoising"])
def test_final_projection_ends_at_the_noise_level(name):
    operator = make_operator(name)
    prior = isotropic_prior((2, 8, 8))
    noise_std = 0.2
    y = operator.measure(prior.flow(rand(6, 2, 8, 8, seed=21), 1.0), noise_std)
    radius = noise_std * math.sqrt(y[0].numel())

    def run(final_projection):
        options = {"step_size": 0.05, "final_projection": final_projection}
        result = solve_inverse_problem(
            prior,
            rand(6, 2, 8, 8, seed=22),
            operator,
            y,
            "gradient",
            nfe=6,
            noise_std=noise_std,
            solver_options=options,
        )
        return (operator.forward(result.samples) - y).flatten(1).norm(dim=1)

    before, after = run(False), run(True)
    assert bool((before > radius).all()), "weak steps leave the residual above the noise level"
    torch.testing.assert_close(after, torch.full_like(after, radius), rtol=1e-9, atol=0)


def test_projection_inside_the_noise_ball_changes_nothing():
    operator = SuperResolution(2)
    x = rand(2, 1, 4, 4)
    y = operator.forward(x) + 1e-3 * rand(2, 1, 2, 2, seed=1)
    torch.testing.assert_close(project_to_noise_level(operator, x, y, noise_std=0.1), x)


@pytest.mark.parametrize("name", ["box", "super_resolution", "denoising"])
@pytest.mark.parametrize("noise_std", [0.0, 0.2])
def test_one_unit_gradient_step_equals_the_projection_on_tight_frames(name, noise_std):
    operator = make_operator(name)
    prior = isotropic_prior((2, 8, 8))
    y = operator.measure(prior.flow(rand(3, 2, 8, 8, seed=23), 1.0), noise_std)
    x0 = rand(3, 2, 8, 8, seed=24)
    runs = [
        solve_inverse_problem(prior, x0, operator, y, method, nfe=5, noise_std=noise_std).samples
        for method in ("projection", "gradient")
    ]
    torch.testing.assert_close(runs[0], runs[1], rtol=1e-10, atol=1e-10)


def test_counted_nfe_callback_and_fresh_noise():
    operator, prior = SuperResolution(2), isotropic_prior((1, 4, 4))
    y = operator.forward(prior.mean.expand(2, 1, 4, 4))
    seen = []
    result = solve_inverse_problem(
        prior, rand(2, 1, 4, 4), operator, y, nfe=7, callback=lambda info: seen.append(info)
    )
    assert result.nfe == 7 and [info["step"] for info in seen] == list(range(7))
    assert seen[-1]["data_estimate"].shape == (2, 1, 4, 4)

    def run(seed):
        options = {"eta": 0.5, "generator": torch.Generator().manual_seed(seed)}
        return solve_inverse_problem(
            prior, rand(2, 1, 4, 4), operator, y, nfe=4, solver_options=options
        ).samples

    torch.testing.assert_close(run(0), run(0))
    assert not torch.allclose(run(0), run(1))


def test_model_inputs_reach_the_model():
    calls = []

    def model(x, t, *, label):
        calls.append(label)
        return torch.zeros_like(x)

    operator = Denoising()
    solve_inverse_problem(
        model, torch.zeros(2, 1, 2, 2), operator, torch.ones(2, 1, 2, 2), nfe=3, label=5
    )
    assert calls == [5, 5, 5]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "ddrm"}, "method"),
        ({"solver_options": {"order": 2}}, "no option 'order'"),
        ({"solver_options": {"eta": 1.5}}, "eta"),
        ({"solver_options": {"noise_estimate": "fresh"}}, "noise_estimate"),
        ({"solver_options": {"data_std": 0.0}}, "data_std"),
        ({"method": "gradient", "solver_options": {"step_size": 2.5}}, "step_size"),
        ({"grid": [0.5, 0.2]}, "increasing"),
        ({"noise_std": -0.1}, "noise_std"),
        ({"eta": 0.3}, "eta"),
    ],
)
def test_bad_sampler_arguments_raise_value_errors(kwargs, message):
    operator, prior = SuperResolution(2), isotropic_prior((1, 4, 4))
    y = operator.forward(prior.mean.expand(2, 1, 4, 4))
    with pytest.raises(ValueError, match=message):
        solve_inverse_problem(prior, rand(2, 1, 4, 4), operator, y, **{"nfe": 4, **kwargs})


def test_measurement_shape_is_checked():
    operator = SuperResolution(2)
    with pytest.raises(ValueError, match="measurement"):
        solve_inverse_problem(
            isotropic_prior((1, 4, 4)), rand(2, 1, 4, 4), operator, torch.zeros(2, 1, 4, 4), nfe=2
        )


def test_no_host_sync_in_the_samplers():
    calls = [
        node.func.attr
        for node in ast.walk(ast.parse(inspect.getsource(inverse)))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    ]
    assert "item" not in calls and "tolist" not in calls
