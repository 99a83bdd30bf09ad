"""Time distributions (KS tests, normalisation, conventions) and inference grids."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from mmflow.timesteps import (
    TIME_DISTRIBUTIONS,
    BetaTime,
    CosMap,
    LogitNormal,
    ModeSampling,
    TimeDistribution,
    Uniform,
    UShaped,
    custom_grid,
    length_shift,
    length_shifted_grid,
    make_grid,
    make_time_distribution,
    shift_time,
    shifted_grid,
    uniform_grid,
)

SAMPLES = 20_000
SEED = 1234

DISTRIBUTIONS = {
    "uniform": Uniform(),
    "logit_normal": LogitNormal(),
    "logit_normal_asymmetric": LogitNormal(loc=0.8, scale=0.7),
    "mode": ModeSampling(scale=1.29),
    "mode_negative": ModeSampling(scale=-0.6),
    "cosmap": CosMap(),
    "u_shaped": UShaped(a=4.0),
    "beta_gesturelsm": BetaTime(a=2.0, b=1.2),
    "beta_asymmetric": BetaTime(a=0.7, b=3.0),
}


def draw(distribution: TimeDistribution, n: int = SAMPLES) -> np.ndarray:
    generator = torch.Generator().manual_seed(SEED)
    samples = distribution.sample(n, generator=generator, dtype=torch.float64)
    assert samples.shape == (n,) and samples.dtype == torch.float64
    assert bool(((samples >= 0) & (samples <= 1)).all())
    return samples.numpy()


def numerical_cdf(distribution: TimeDistribution, intervals: int = 2000, order: int = 10):
    """CDF obtained by integrating ``pdf`` (Gauss-Legendre on each interval), as a callable."""
    nodes = 0.5 * (1 - np.cos(np.linspace(0.0, np.pi, intervals + 1)))  # dense near 0 and 1
    points, weights = np.polynomial.legendre.leggauss(order)
    half = 0.5 * np.diff(nodes)[:, None]
    abscissae = (0.5 * (nodes[:-1] + nodes[1:]))[:, None] + half * points[None, :]
    density = distribution.pdf(torch.tensor(abscissae)).numpy()
    pieces = (half * weights[None, :] * density).sum(axis=1)
    cumulative = np.concatenate([[0.0], np.cumsum(pieces)])
    return lambda t: np.interp(t, nodes, cumulative)


@pytest.mark.parametrize("name", list(DISTRIBUTIONS))
def test_pdf_integrates_to_one(name):
    distribution = DISTRIBUTIONS[name]

    def density(t: float) -> float:
        return float(distribution.pdf(torch.tensor(t, dtype=torch.float64)))

    total, _ = integrate.quad(density, 0, 1, points=[0.5], limit=400)
    assert abs(total - 1) < 1e-6


@pytest.mark.parametrize("name", list(DISTRIBUTIONS))
def test_samples_follow_integrated_pdf(name):
    distribution = DISTRIBUTIONS[name]
    result = stats.kstest(draw(distribution), numerical_cdf(distribution))
    assert result.pvalue > 0.01, result


@pytest.mark.parametrize("name", list(DISTRIBUTIONS))
def test_samples_follow_closed_form_cdf(name):
    distribution = DISTRIBUTIONS[name]

    def cdf(t: np.ndarray) -> np.ndarray:
        return distribution.cdf(torch.as_tensor(t, dtype=torch.float64)).numpy()

    result = stats.kstest(draw(distribution), cdf)
    assert result.pvalue > 0.01, result


@pytest.mark.parametrize("name", list(DISTRIBUTIONS))
def test_closed_form_cdf_matches_integrated_pdf(name):
    distribution = DISTRIBUTIONS[name]
    t = np.linspace(0.0, 1.0, 57)
    closed = distribution.cdf(torch.tensor(t)).numpy()
    np.testing.assert_allclose(closed, numerical_cdf(distribution)(t), atol=1e-5)


def test_ks_detects_a_wrong_distribution():
    """Guard: the KS machinery rejects samples whose location is flipped."""
    normal = torch.randn(
        SAMPLES, generator=torch.Generator().manual_seed(SEED), dtype=torch.float64
    )
    samples = torch.sigmoid(-0.8 + 0.7 * normal).numpy()
    assert stats.kstest(samples, numerical_cdf(LogitNormal(loc=0.8, scale=0.7))).pvalue < 1e-6


def test_logit_normal_matches_sd3_noise_level_convention():
    """SD3: sigma = sigmoid(m + s n), positive m favours noise. Ours: loc = -m, t = 1 - sigma."""
    m, s = 0.6, 0.9
    t = draw(LogitNormal.from_sd3(m=m, s=s))

    def sd3_sigma_cdf(sigma: np.ndarray) -> np.ndarray:
        return stats.norm.cdf((np.log(sigma / (1 - sigma)) - m) / s)

    assert stats.kstest(1 - t, sd3_sigma_cdf).pvalue > 0.01
    assert t.mean() < 0.5  # m > 0 favours noise, i.e. small t
    assert LogitNormal.from_sd3(m=m, s=s).loc == -m


def test_mode_sampling_matches_sd3_formula_and_is_symmetric():
    scale = 1.29
    u = torch.linspace(0, 1, 101, dtype=torch.float64)
    sd3_sigma = 1 - u - scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
    torch.testing.assert_close(ModeSampling(scale).transform(u), 1 - sd3_sigma)
    pdf = ModeSampling(scale).pdf
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    torch.testing.assert_close(pdf(t), pdf(1 - t))


def test_cosmap_matches_sd3_density():
    t = torch.linspace(0.0, 1.0, 11, dtype=torch.float64)
    sd3_sigma = 1 - t
    sd3_density = 2 / (math.pi - 2 * math.pi * sd3_sigma + 2 * math.pi * sd3_sigma**2)
    torch.testing.assert_close(CosMap().pdf(t), sd3_density)


def test_beta_and_u_shaped_conventions():
    assert draw(BetaTime(2.0, 1.2)).mean() == pytest.approx(
        2 / 3.2, abs=0.01
    )  # data end in our time
    u_shaped = UShaped(4.0)
    ends, middle = u_shaped.pdf(torch.tensor([0.0, 1.0])), u_shaped.pdf(torch.tensor(0.5))
    assert torch.allclose(ends[0], ends[1]) and bool((ends > 3 * middle).all())
    c = 4.0 / (math.exp(4.0) - 1)  # RF++: 0.5 * (C e^{a t} + C e^{a (1 - t)})
    t = torch.linspace(0, 1, 9, dtype=torch.float64)
    torch.testing.assert_close(
        u_shaped.pdf(t), 0.5 * c * (torch.exp(4 * t) + torch.exp(4 * (1 - t)))
    )


def test_sampling_is_reproducible_with_generator():
    for distribution in DISTRIBUTIONS.values():
        first = distribution.sample(64, generator=torch.Generator().manual_seed(0))
        second = distribution.sample(64, generator=torch.Generator().manual_seed(0))
        assert first.dtype == torch.float32 and torch.equal(first, second)


def test_registry_and_validation():
    assert set(TIME_DISTRIBUTIONS) == {
        "uniform",
        "logit_normal",
        "mode",
        "cosmap",
        "u_shaped",
        "beta",
    }
    assert isinstance(make_time_distribution("logit_normal", loc=0.5), LogitNormal)
    built = make_time_distribution("logit_normal", loc=0.5)
    assert built.loc == 0.5 and built.scale == LogitNormal().scale
    t = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    torch.testing.assert_close(built.pdf(t), LogitNormal(loc=0.5).pdf(t))
    with pytest.raises(ValueError, match="`name`"):
        make_time_distribution("gaussian")
    with pytest.raises(ValueError, match="`scale`"):
        ModeSampling(scale=1.8)
    with pytest.raises(ValueError, match="`scale`"):
        ModeSampling(scale=-1.1)
    with pytest.raises(ValueError, match="`scale`"):
        LogitNormal(scale=0.0)
    with pytest.raises(ValueError, match="`b`"):
        BetaTime(a=1.0, b=-1.0)
    with pytest.raises(ValueError, match="`a`"):
        UShaped(a=0.0)
    with pytest.raises(ValueError, match="`n`"):
        Uniform().sample(-1)


def test_distributions_construct_from_yaml_via_jsonargparse():
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = jsonargparse.ArgumentParser()
    parser.add_argument("--time", type=TimeDistribution)
    config = parser.parse_string(
        "time:\n  class_path: mmflow.timesteps.LogitNormal\n  init_args:\n    loc: 0.3\n"
    )
    time = parser.instantiate(config).time
    assert isinstance(time, LogitNormal) and time.loc == 0.3


# ---------------------------------------------------------------- grids


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_uniform_and_shifted_grids(dtype):
    for grid in (
        uniform_grid(8, dtype),
        shifted_grid(8, 3.0, dtype),
        length_shifted_grid(8, 1024, dtype=dtype),
    ):
        assert grid.shape == (9,) and grid.dtype == dtype
        assert grid[0].item() == 0.0 and grid[-1].item() == 1.0
        assert bool((grid[1:] > grid[:-1]).all())
    k = torch.arange(9, dtype=torch.float64) / 8
    torch.testing.assert_close(uniform_grid(8, dtype), k.to(dtype))
    # SD3 shift in our time: t' = t / (s - (s - 1) t); the length shift of 1024 tokens is
    # exp(0.5 + (1024 - 256) / (4096 - 256) * 0.65) = exp(0.63).
    torch.testing.assert_close(shifted_grid(8, 3.0, dtype), (k / (3 - 2 * k)).to(dtype))
    s = math.exp(0.63)
    torch.testing.assert_close(
        length_shifted_grid(8, 1024, dtype=dtype), (k / (s - (s - 1) * k)).to(dtype)
    )


def test_shift_matches_sd3_sigma_formula():
    shift = 3.0
    t = torch.linspace(0, 1, 21, dtype=torch.float64)
    sigma = 1 - t
    sd3_sigma = shift * sigma / (1 + (shift - 1) * sigma)
    torch.testing.assert_close(shift_time(t, shift), 1 - sd3_sigma)
    assert bool((shift_time(t, shift)[1:-1] < t[1:-1]).all())  # shift > 1: more steps near noise
    torch.testing.assert_close(shift_time(t, 1.0), t)


def test_length_shift_endpoints_and_flux_formula():
    assert length_shift(256) == pytest.approx(math.exp(0.5))
    assert length_shift(4096) == pytest.approx(math.exp(1.15))
    assert length_shift(2176) == pytest.approx(math.exp(0.825))
    mu = math.log(length_shift(1024))
    sigma = torch.linspace(0.05, 1, 20, dtype=torch.float64)
    flux = math.exp(mu) / (math.exp(mu) + (1 / sigma - 1))  # Flux time_shift(mu, 1, sigma)
    torch.testing.assert_close(1 - shift_time(1 - sigma, math.exp(mu)), flux)
    torch.testing.assert_close(
        length_shifted_grid(10, 1024, dtype=torch.float64),
        shifted_grid(10, length_shift(1024), torch.float64),
    )


def test_make_grid_dispatch():
    torch.testing.assert_close(make_grid("uniform", 5), uniform_grid(5))
    torch.testing.assert_close(make_grid("shifted", 5, shift=2.0), shifted_grid(5, 2.0))
    torch.testing.assert_close(
        make_grid("length_shifted", 5, seq_len=512), length_shifted_grid(5, 512)
    )
    custom = make_grid([0.0, 0.2, 0.7, 0.96], dtype=torch.float64)
    assert custom.dtype == torch.float64 and custom.shape == (4,)
    expected = torch.tensor([0.0, 0.2, 0.7, 0.96], dtype=torch.float64)
    torch.testing.assert_close(custom, expected, atol=1e-7, rtol=0)
    with pytest.raises(ValueError, match="`spec`"):
        make_grid("cosine", 5)
    with pytest.raises(ValueError, match="`shift`"):
        make_grid("shifted", 5)
    with pytest.raises(ValueError, match="`seq_len`"):
        make_grid("length_shifted", 5)
    with pytest.raises(ValueError, match="`steps`"):
        make_grid("uniform")
    with pytest.raises(ValueError, match="`steps`"):
        make_grid([0.0, 0.5, 1.0], steps=3)


def test_custom_grid_errors():
    torch.testing.assert_close(
        custom_grid(torch.tensor([0.0, 0.5, 1.0])), torch.tensor([0.0, 0.5, 1.0])
    )
    with pytest.raises(ValueError, match="1-D"):
        custom_grid([[0.0, 1.0]])
    with pytest.raises(ValueError, match="at least 2"):
        custom_grid([0.5])
    with pytest.raises(ValueError, match="strictly increasing"):
        custom_grid([0.0, 0.5, 0.5, 1.0])
    with pytest.raises(ValueError, match="strictly increasing"):
        custom_grid([1.0, 0.5, 0.0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        custom_grid([0.0, 0.5, 1.2])
    with pytest.raises(ValueError, match="finite"):
        custom_grid([0.0, float("nan"), 1.0])


def test_grid_argument_errors():
    with pytest.raises(ValueError, match="`steps`"):
        uniform_grid(0)
    with pytest.raises(ValueError, match="`shift`"):
        shifted_grid(4, 0.0)
    with pytest.raises(ValueError, match="`seq_len`"):
        length_shift(0)
    with pytest.raises(ValueError, match="`max_len`"):
        length_shift(100, base_len=256, max_len=256)
