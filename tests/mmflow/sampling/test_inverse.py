"""Flow-prior posterior samplers for linear inverse problems against closed-form answers.

Samplers run on Gaussian priors whose velocity is exact (:class:`GaussianLinearFlow`), where
the posterior of a linear-Gaussian measurement is known. The operators are the core's
:class:`Denoising` and :class:`Masking`, a selection of coordinates defined here for its
non-trivial null space; operators are checked against their dense matrices (adjoint,
Moore-Penrose pseudo-inverse, Tikhonov inverse). The image modality's operators (inpainting,
super-resolution, blur) are tested in ``tests/modalities/image/test_operators.py``.
"""

import math

import pytest
import torch
from torch import Tensor

from mmflow.sampling import Denoising, LinearOperator, sample
from mmflow.sampling.analytic import GaussianLinearFlow
from mmflow.sampling.inverse import posterior_variance, project_to_noise_level

DT = torch.float64
METHODS = ["inverse_projection", "inverse_gradient"]


class Masking(LinearOperator):
    """Keep the entries where ``mask`` (the trailing dimensions of ``x``) is true.

    ``A x = x[..., mask]`` selects coordinates, so ``A A^T = I``, ``A^+ = A^T`` (zero fill),
    ``A^T (A A^T + c I)^{-1} y = A^T y / (1 + c)`` and ``||A||^2 = 1``; the hidden entries are
    its null space.
    """

    def __init__(self, mask: Tensor) -> None:
        self.mask = mask

    def forward(self, x: Tensor) -> Tensor:
        return x[..., self.mask]

    def adjoint(self, y: Tensor) -> Tensor:
        x = y.new_zeros(*y.shape[:-1], *self.mask.shape)
        x[..., self.mask] = y
        return x

    def regularized_inverse(self, y: Tensor, damping: float | Tensor) -> Tensor:
        return self.adjoint(y) / (1 + damping)

    def norm_bound(self, like: Tensor) -> float:
        return 1.0


def box_mask(size: int, box: tuple[int, int]) -> Masking:
    """Hide a ``box = (height, width)`` in the middle of ``size x size`` images."""
    mask = torch.ones(size, size, dtype=torch.bool)
    top, left = (size - box[0]) // 2, (size - box[1]) // 2
    mask[top : top + box[0], left : left + box[1]] = False
    return Masking(mask)


def random_mask(size: int, missing: float, seed: int) -> Masking:
    """Hide each pixel of ``size x size`` images with probability ``missing``."""
    generator = torch.Generator().manual_seed(seed)
    return Masking(torch.rand((size, size), generator=generator) >= missing)


def make_operator(name: str, size: int = 8) -> LinearOperator:
    if name == "box":
        return box_mask(size, (size // 2, size // 2 + 1))
    if name == "random_pixels":
        return random_mask(size, 0.4, seed=1)
    if name == "per_channel_mask":
        return Masking(torch.rand(2, size, size, generator=torch.Generator().manual_seed(2)) > 0.3)
    if name == "denoising":
        return Denoising()
    raise KeyError(name)


OPERATORS = ["box", "random_pixels", "per_channel_mask", "denoising"]


def problem(operator: LinearOperator, measurement: Tensor, noise_std: float = 0.0, **options):
    """The ``solver_options`` of the inverse problem ``y = A x1 + noise_std n``."""
    return {"operator": operator, "measurement": measurement, "noise_std": noise_std, **options}


def dense(operator, image_shape) -> torch.Tensor:
    """The matrix of ``operator`` on flattened images of ``image_shape`` (C, H, W)."""
    n = math.prod(image_shape)
    basis = torch.eye(n, dtype=DT).reshape(n, *image_shape)
    return operator.forward(basis).reshape(n, -1).T


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


def check_adjoint_satisfies_the_inner_product_identity(operator):
    x = rand(3, 2, 8, 8)
    y = rand(*operator.forward(x).shape, seed=1)
    lhs = (operator.forward(x) * y).sum()
    rhs = (x * operator.adjoint(y)).sum()
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)


def check_pseudo_inverse_is_the_moore_penrose_inverse(operator):
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


def check_regularized_inverse_is_the_tikhonov_formula(operator):
    matrix = dense(operator, (2, 8, 8))
    damping = 0.3
    y = rand(*operator.forward(rand(3, 2, 8, 8)).shape, seed=1)
    gram = matrix @ matrix.T + damping * torch.eye(matrix.shape[0], dtype=DT)
    expected = torch.linalg.solve(gram, y.reshape(3, -1).T).T @ matrix
    torch.testing.assert_close(
        operator.regularized_inverse(y, damping).reshape(3, -1), expected, rtol=1e-9, atol=1e-10
    )


def check_norm_bound_bounds_the_spectral_norm(operator, tight: bool = True):
    exact = float(torch.linalg.matrix_norm(dense(operator, (2, 8, 8)), 2) ** 2)
    bound = operator.norm_bound(torch.zeros(1, 2, 8, 8, dtype=DT))
    assert bound >= exact - 1e-12
    if tight:
        assert bound == pytest.approx(exact, rel=1e-12)


@pytest.mark.parametrize("name", OPERATORS)
def test_operator_identities(name):
    """Adjoint, Moore-Penrose pseudo-inverse, Tikhonov inverse and norm bound of each operator."""
    operator = make_operator(name)
    check_adjoint_satisfies_the_inner_product_identity(operator)
    check_pseudo_inverse_is_the_moore_penrose_inverse(operator)
    check_regularized_inverse_is_the_tikhonov_formula(operator)
    check_norm_bound_bounds_the_spectral_norm(operator)


def test_a_negative_measurement_noise_is_refused():
    with pytest.raises(ValueError, match="noise_std"):
        Denoising().measure(torch.zeros(1, 1, 2, 2), -1.0)


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


def check_correction_is_the_exact_posterior_mean(operator, method):
    """One step from x_t straight to t = 1 returns the corrected x1: E[x1 | x_t, y] exactly."""
    prior = isotropic_prior((2, 8, 8))
    t, noise_std = 0.6, 0.3
    x1 = prior.mean + prior.std * rand(4, 2, 8, 8, seed=4)
    x_t = t * x1 + (1 - t) * rand(4, 2, 8, 8, seed=5)
    y = operator.measure(x1, noise_std, torch.Generator().manual_seed(6))
    options = {"data_std": 0.7, "final_projection": False}
    if method == "inverse_gradient":
        options["gradient_steps"] = 200
    result = sample(
        prior, x_t, method, grid=[t, 1.0], solver_options=problem(operator, y, noise_std, **options)
    )
    expected = exact_posterior_mean(prior, operator, t, x_t, y, noise_std)
    torch.testing.assert_close(result.samples, expected, rtol=1e-9, atol=1e-9)
    assert result.nfe == 1


@pytest.mark.parametrize("name", ["box", "denoising"])
@pytest.mark.parametrize("method", METHODS)
def test_correction_from_x_t_is_the_exact_posterior_mean_for_isotropic_gaussian_data(name, method):
    check_correction_is_the_exact_posterior_mean(make_operator(name), method)


def test_posterior_variance_is_the_conditional_variance_of_gaussian_data():
    t = torch.tensor([0.0, 0.3, 0.9], dtype=DT)
    s = 0.7
    expected = s**2 - (t * s**2) ** 2 / (t**2 * s**2 + (1 - t) ** 2)
    torch.testing.assert_close(posterior_variance(t, s), expected)


def test_noiseless_projection_fills_the_null_space_with_the_prior_flow():
    """Diagonal prior, box mask: hidden pixels follow the plain Euler flow, seen ones = y."""
    image_shape = (1, 4, 4)
    prior = GaussianLinearFlow(rand(*image_shape, seed=7), 0.4 + rand(*image_shape, seed=8).abs())
    operator = box_mask(4, (2, 2))
    x0 = rand(16, *image_shape, seed=9)
    y = operator.forward(prior.flow(rand(16, *image_shape, seed=10), 1.0))
    result = sample(prior, x0, "inverse_projection", nfe=12, solver_options=problem(operator, y))
    unconditional = sample(prior, x0, method="euler", nfe=12).samples
    hidden = ~operator.mask
    torch.testing.assert_close(result.samples[..., hidden], unconditional[..., hidden])
    torch.testing.assert_close(operator.forward(result.samples), y, rtol=0, atol=1e-12)


def check_many_samples_approach_the_closed_form_posterior(operator):
    """Isotropic Gaussian data, noisy measurement, "corrected" noise: exact posterior flow."""
    image_shape, count, noise_std, std = (1, 4, 4), 4000, 0.3, 0.7
    prior = isotropic_prior(image_shape, std)
    x1 = prior.mean + std * rand(1, *image_shape, seed=11)
    y = operator.measure(x1, noise_std, torch.Generator().manual_seed(12))
    y = y.expand(count, *y.shape[1:])
    options = {"data_std": std, "noise_estimate": "corrected", "final_projection": False}
    result = sample(
        prior,
        rand(count, *image_shape, seed=13),
        "inverse_projection",
        nfe=128,
        solver_options=problem(operator, y, noise_std, **options),
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


@pytest.mark.parametrize("name", ["box", "denoising"])
def test_mean_and_variance_of_many_samples_approach_the_closed_form_posterior(name):
    check_many_samples_approach_the_closed_form_posterior(make_operator(name, size=4))


def test_noiseless_mean_of_many_samples_is_the_conditional_mean_for_a_diagonal_prior():
    image_shape, count = (1, 4, 4), 4000
    std = 0.4 + rand(*image_shape, seed=14).abs()
    prior = GaussianLinearFlow(rand(*image_shape, seed=15), std)
    operator = random_mask(4, 0.5, seed=16)
    y = operator.forward(prior.flow(rand(1, *image_shape, seed=17), 1.0)).expand(count, -1, -1)
    x0 = rand(count, *image_shape, seed=18)
    result = sample(prior, x0, "inverse_projection", nfe=32, solver_options=problem(operator, y))
    expected = operator.adjoint(y[:1]) + ~operator.mask * prior.mean
    error = (result.samples.mean(0, keepdim=True) - expected).abs()
    assert bool((error <= 5 * std / math.sqrt(count)).all())


def check_noiseless_results_reproduce_the_measurement(operator, method):
    prior = isotropic_prior((2, 8, 8))
    y = operator.forward(prior.flow(rand(3, 2, 8, 8, seed=19), 1.0))
    x0 = rand(3, 2, 8, 8, seed=20)
    result = sample(prior, x0, method, nfe=8, solver_options=problem(operator, y))
    residual = (operator.forward(result.samples) - y).flatten(1).norm(dim=1)
    assert bool((residual < 1e-8).all())


@pytest.mark.parametrize("name", OPERATORS)
@pytest.mark.parametrize("method", METHODS)
def test_noiseless_results_reproduce_the_measurement(name, method):
    check_noiseless_results_reproduce_the_measurement(make_operator(name, size=8), method)


def check_final_projection_ends_at_the_noise_level(operator):
    prior = isotropic_prior((2, 8, 8))
    noise_std = 0.2
    y = operator.measure(prior.flow(rand(6, 2, 8, 8, seed=21), 1.0), noise_std)
    radius = noise_std * math.sqrt(y[0].numel())

    def run(final_projection):
        options = problem(operator, y, noise_std, step_size=0.05, final_projection=final_projection)
        x0 = rand(6, 2, 8, 8, seed=22)
        result = sample(prior, x0, "inverse_gradient", nfe=6, solver_options=options)
        return (operator.forward(result.samples) - y).flatten(1).norm(dim=1)

    before, after = run(False), run(True)
    assert bool((before > radius).all()), "weak steps leave the residual above the noise level"
    torch.testing.assert_close(after, torch.full_like(after, radius), rtol=1e-9, atol=0)


@pytest.mark.parametrize("name", ["box", "denoising"])
def test_final_projection_ends_at_the_noise_level(name):
    check_final_projection_ends_at_the_noise_level(make_operator(name))


def test_projection_inside_the_noise_ball_changes_nothing():
    operator = box_mask(4, (2, 2))
    x = rand(2, 1, 4, 4)
    y = operator.forward(x) + 1e-3 * rand(2, 1, 12, seed=1)
    torch.testing.assert_close(project_to_noise_level(operator, x, y, noise_std=0.1), x)


def check_one_unit_gradient_step_equals_the_projection(operator, noise_std):
    prior = isotropic_prior((2, 8, 8))
    y = operator.measure(prior.flow(rand(3, 2, 8, 8, seed=23), 1.0), noise_std)
    x0 = rand(3, 2, 8, 8, seed=24)
    options = problem(operator, y, noise_std)
    runs = [sample(prior, x0, method, nfe=5, solver_options=options).samples for method in METHODS]
    torch.testing.assert_close(runs[0], runs[1], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["box", "denoising"])
@pytest.mark.parametrize("noise_std", [0.0, 0.2])
def test_one_unit_gradient_step_equals_the_projection_on_tight_frames(name, noise_std):
    check_one_unit_gradient_step_equals_the_projection(make_operator(name), noise_std)


def test_counted_nfe_callback_and_fresh_noise():
    operator, prior = box_mask(4, (2, 2)), isotropic_prior((1, 4, 4))
    y = operator.forward(prior.mean.expand(2, 1, 4, 4))
    seen = []
    result = sample(
        prior,
        rand(2, 1, 4, 4),
        "inverse_projection",
        nfe=7,
        callback=lambda info: seen.append(info),
        solver_options=problem(operator, y),
    )
    assert result.nfe == 7 and [info["step"] for info in seen] == list(range(7))
    assert seen[-1]["data_estimate"].shape == (2, 1, 4, 4)

    def run(seed):
        options = problem(operator, y, eta=0.5, generator=torch.Generator().manual_seed(seed))
        return sample(
            prior, rand(2, 1, 4, 4), "inverse_projection", nfe=4, solver_options=options
        ).samples

    torch.testing.assert_close(run(0), run(0))
    assert not torch.allclose(run(0), run(1))


def test_model_inputs_reach_the_model():
    calls = []

    def model(x, t, *, label):
        calls.append(label)
        return torch.zeros_like(x)

    options = problem(Denoising(), torch.ones(2, 1, 2, 2))
    sample(
        model, torch.zeros(2, 1, 2, 2), "inverse_projection", nfe=3, solver_options=options, label=5
    )
    assert calls == [5, 5, 5]


@pytest.mark.parametrize(
    "method, kwargs, message",
    [
        ("inverse_ddrm", {}, "unknown sampler `inverse_ddrm`"),
        ("inverse_projection", {"options": {"order": 2}}, "no option 'order'"),
        ("inverse_projection", {"options": {"eta": 1.5}}, "eta"),
        ("inverse_projection", {"options": {"noise_estimate": "fresh"}}, "noise_estimate"),
        ("inverse_projection", {"options": {"data_std": 0.0}}, "data_std"),
        ("inverse_gradient", {"options": {"step_size": 2.5}}, "step_size"),
        ("inverse_projection", {"grid": [0.5, 0.2]}, "must increase"),
        ("inverse_projection", {"options": {"noise_std": -0.1}}, "noise_std"),
        ("inverse_projection", {"model_kwargs": {"eta": 0.3}}, "eta given as model input"),
    ],
)
def test_bad_sampler_arguments_raise_value_errors(method, kwargs, message):
    operator, prior = box_mask(4, (2, 2)), isotropic_prior((1, 4, 4))
    y = operator.forward(prior.mean.expand(2, 1, 4, 4))
    grid = kwargs.get("grid")
    options = {**problem(operator, y), **kwargs.get("options", {})}
    with pytest.raises(ValueError, match=message):
        sample(
            prior,
            rand(2, 1, 4, 4),
            method,
            nfe=None if grid is not None else 4,
            grid=grid,
            solver_options=options,
            **kwargs.get("model_kwargs", {}),
        )


def test_measurement_shape_is_checked():
    operator = box_mask(4, (2, 2))
    options = problem(operator, torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match="measurement"):
        sample(
            isotropic_prior((1, 4, 4)),
            rand(2, 1, 4, 4),
            "inverse_projection",
            nfe=2,
            solver_options=options,
        )
    with pytest.raises(ValueError, match="needs the option"):
        sample(isotropic_prior((1, 4, 4)), rand(2, 1, 4, 4), "inverse_projection", nfe=2)
