"""Linear inverse problems with a flow prior: degradation operators and posterior samplers.

A measurement of an unknown image ``x1`` is ``y = A x1 + sigma_y n`` with a known linear
operator ``A`` (a mask, average pooling, a blur, the identity) and ``n ~ N(0, I)``. A trained
velocity model ``u(x, t)`` (t = 0 noise, t = 1 data, ``x_t = (1 - t) eps + t x1``) is the prior.
Every step of the samplers here reads the model's two estimates at the current point,

    x1_hat  = x + (1 - t) u(x, t)        (data,  E[x1 | x_t = x])
    eps_hat = x - t u(x, t)              (noise, E[eps | x_t = x]),

moves ``x1_hat`` towards the measurement (the data-consistency step, below, giving ``x1``),
and puts the corrected estimate back on the path at the next grid time ``t'``:

    x_{t'} = (1 - t') eps' + t' x1,    eps' = sqrt(1 - eta^2) eps_est + eta z,

with fresh noise ``z ~ N(0, I)`` weighted by ``eta`` (0 = deterministic) and ``eps_est``

- ``"model"``: ``eps_hat``, the model's own noise estimate. This is DDNM's re-interpolation
  (Wang et al., ICLR 2023, "Zero-Shot Image Restoration Using Denoising Diffusion Null-Space
  Model") in our convention; Flower (Pourya et al., ICLR 2026) uses the same three parts with
  ``eta = 1``. The correction is not reflected in the noise, so successive corrections add
  up: harmless for the idempotent projection, but with the noise-aware shrinkage below the
  result over-fits the noise as steps are added (measured: beyond ``y`` on a Gaussian prior).
- ``"corrected"``: ``(x - t x1) / (1 - t)``, the noise consistent with ``x`` and ``x1``. The
  step is then the Euler step of the corrected velocity ``u + (x1 - x1_hat) / (1 - t)``, the
  velocity-correction view of ΠGDM for flows (Pokle et al., ICLR 2024, "Training-free Linear
  Image Inverses via Flows"). It integrates the exact posterior flow when data are
  ``N(m, s^2 I)`` and ``data_std = s``.

Without a correction both are exactly the Euler step ``x + (t' - t) u`` (DDIM for flows) when
``eta = 0``.

Data consistency (``r_t^2`` is the variance of ``x1`` given ``x_t`` for data
``N(m, data_std^2 I)``, the ΠGDM choice that Pokle et al. carry over to flows):

    r_t^2 = (1 - t)^2 s^2 / (t^2 s^2 + (1 - t)^2),    s = data_std

- ``"projection"`` (range-null-space, DDNM): ``x1 <- x1_hat + A^+ (y - A x1_hat)``, so that
  ``A x1 = y`` while the null-space part ``(I - A^+ A) x1_hat`` is the prior's. With noise
  (``sigma_y > 0``) the noise-aware variant is the posterior mean under the Gaussian
  approximation ``x1 | x_t ~ N(x1_hat, r_t^2 I)``:

      x1 <- x1_hat + A^T (A A^T + (sigma_y^2 / r_t^2) I)^{-1} (y - A x1_hat),

  which is the projection for ``sigma_y = 0`` and shrinks the correction where the
  measurement noise dominates the prior's uncertainty.
- ``"gradient"`` (FlowChef and PnP-Flow, Martin et al., ICLR 2025, take such steps; no
  inverse of ``A`` is needed): ``K`` steps of
  gradient descent on the same posterior energy
  ``E(x) = r_t^2 ||A x - y||^2 / 2 + sigma_y^2 ||x - x1_hat||^2 / 2`` from ``x = x1_hat``,

      x <- x - zeta_t (A^T (A x - y) + (sigma_y^2 / r_t^2) (x - x1_hat)),
      zeta_t = step_size * r_t^2 / (r_t^2 L + sigma_y^2),    L >= ||A||^2,

  which for ``sigma_y = 0`` is ``x1_hat <- x1_hat - zeta A^T (A x1_hat - y)`` with
  ``zeta = step_size / L``. For a tight frame (``A A^T = I / L``: inpainting, average-pooling
  super-resolution, denoising) one step with ``step_size = 1`` equals the projection.

After the last step an optional final projection onto the discrepancy ball
``||A x - y|| <= sigma_y sqrt(m)`` (``m`` measurements per sample, Morozov's principle) moves
``x`` by ``A^+ (1 - sigma_y sqrt(m) / ||r||)_+ r`` with ``r = y - A x``: the residual ends
equal to the noise level when it was larger and is left alone otherwise (0 for
``sigma_y = 0``).

Operators act on image batches ``[B, C, H, W]`` and expose ``forward`` (``A x``), ``adjoint``
(``A^T y``), ``pseudo_inverse`` (``A^+ y``), ``regularized_inverse``
(``A^T (A A^T + c I)^{-1} y``) and ``norm_bound`` (``L >= ||A||^2``).
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mmflow.sampling.registry import NFECounter, SampleResult
from mmflow.sampling.solvers import Callback, VelocityModel
from mmflow.timesteps import make_grid

Damping = float | Tensor
Correction = Callable[[Tensor, Tensor], Tensor]

_TINY = 1e-30
NOISE_ESTIMATES = ("model", "corrected")


def _check_images(x: Tensor, name: str = "x") -> None:
    if x.ndim != 4:
        raise ValueError(f"`{name}` must be an image batch [B, C, H, W], got {tuple(x.shape)}")


def _batch_dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample inner product ``<a_i, b_i>`` as ``[B, 1, ..., 1]``."""
    return (a * b).flatten(1).sum(1).view(-1, *([1] * (a.ndim - 1)))


def _batch_norm(a: Tensor) -> Tensor:
    """Per-sample Euclidean norm as ``[B, 1, ..., 1]``."""
    return _batch_dot(a, a).sqrt()


class LinearOperator(ABC):
    """A linear degradation ``y = A x`` of image batches ``[B, C, H, W]``.

    Subclasses give ``A x``, ``A^T y``, the regularized inverse
    ``A^T (A A^T + c I)^{-1} y = (A^T A + c I)^{-1} A^T y`` and a bound ``L >= ||A||^2``;
    the Moore-Penrose pseudo-inverse is the regularized inverse at ``c = 0``
    (``A^+ = A^T (A A^T)^{-1}`` for the full-row-rank operators here).
    """

    @abstractmethod
    def forward(self, x: Tensor) -> Tensor:
        """``A x``."""

    @abstractmethod
    def adjoint(self, y: Tensor) -> Tensor:
        """``A^T y``, defined by ``<A x, y> = <x, A^T y>``."""

    @abstractmethod
    def regularized_inverse(self, y: Tensor, damping: Damping) -> Tensor:
        """``A^T (A A^T + damping I)^{-1} y``, the Tikhonov-regularized inverse."""

    @abstractmethod
    def norm_bound(self, like: Tensor) -> float:
        """An upper bound ``L`` of ``||A||^2`` on images shaped like ``like`` (exact if cheap)."""

    def pseudo_inverse(self, y: Tensor) -> Tensor:
        """``A^+ y``: the minimum-norm ``x`` with ``A x`` closest to ``y``."""
        return self.regularized_inverse(y, 0.0)

    def measure(
        self, x: Tensor, noise_std: float, generator: torch.Generator | None = None
    ) -> Tensor:
        """A noisy measurement ``y = A x + noise_std * n`` with ``n ~ N(0, I)``."""
        if noise_std < 0:
            raise ValueError(f"`noise_std` must be >= 0, got {noise_std}")
        clean = self.forward(x)
        noise = torch.randn(
            clean.shape, generator=generator, dtype=clean.dtype, device=clean.device
        )
        return clean + noise_std * noise

    def __call__(self, x: Tensor) -> Tensor:
        return self.forward(x)


class Inpainting(LinearOperator):
    """Keep the pixels where ``mask`` is true: ``A x = x[..., mask]``.

    ``mask`` is boolean ``[H, W]`` (shared by all channels; ``y`` is ``[B, C, K]``) or
    ``[C, H, W]`` (``y`` is ``[B, K]``), with ``K`` kept pixels. ``A`` selects coordinates, so
    ``A A^T = I``, ``A^+ = A^T`` (zero fill) and ``A^T (A A^T + c I)^{-1} y = A^T y / (1 + c)``.
    """

    def __init__(self, mask: Tensor) -> None:
        if mask.dtype != torch.bool or mask.ndim not in (2, 3):
            raise ValueError(
                f"`mask` must be a boolean [H, W] or [C, H, W] tensor, got {mask.dtype} "
                f"{tuple(mask.shape)}"
            )
        if not bool(mask.any()):
            raise ValueError("`mask` keeps no pixel")
        self.mask = mask

    @classmethod
    def box(cls, size: tuple[int, int], top: int, left: int, height: int, width: int) -> Inpainting:
        """Hide the box ``[top, top + height) x [left, left + width)`` of a ``size`` image."""
        rows, cols = size
        if not (0 <= top < top + height <= rows and 0 <= left < left + width <= cols):
            raise ValueError(f"box (top={top}, left={left}, {height}x{width}) is outside {size}")
        mask = torch.ones(rows, cols, dtype=torch.bool)
        mask[top : top + height, left : left + width] = False
        return cls(mask)

    @classmethod
    def centre_box(cls, size: tuple[int, int], box: tuple[int, int]) -> Inpainting:
        """Hide a ``box = (height, width)`` box in the middle of a ``size`` image."""
        (rows, cols), (height, width) = size, box
        return cls.box(size, (rows - height) // 2, (cols - width) // 2, height, width)

    @classmethod
    def random_pixels(
        cls, size: tuple[int, int], missing: float, generator: torch.Generator | None = None
    ) -> Inpainting:
        """Hide each pixel independently with probability ``missing``."""
        if not 0.0 <= missing < 1.0:
            raise ValueError(f"`missing` must be in [0, 1), got {missing}")
        return cls(torch.rand(size, generator=generator) >= missing)

    def _mask_for(self, x: Tensor) -> Tensor:
        _check_images(x)
        if tuple(x.shape[-self.mask.ndim :]) != tuple(self.mask.shape):
            raise ValueError(
                f"`x` {tuple(x.shape)} does not end with the mask's shape {tuple(self.mask.shape)}"
            )
        return self.mask.to(x.device)

    def forward(self, x: Tensor) -> Tensor:
        return x[..., self._mask_for(x)]

    def adjoint(self, y: Tensor) -> Tensor:
        mask = self.mask.to(y.device)
        image = y.new_zeros(*y.shape[:-1], *mask.shape)
        image[..., mask] = y
        return image

    def regularized_inverse(self, y: Tensor, damping: Damping) -> Tensor:
        return self.adjoint(y) / (1 + damping)

    def norm_bound(self, like: Tensor) -> float:
        return 1.0


class SuperResolution(LinearOperator):
    """Average pooling by ``factor``: ``A x`` is the mean of every ``factor x factor`` block.

    ``A A^T = I / factor^2``, so ``A^+ = factor^2 A^T`` is nearest-neighbour upsampling
    (``A A^+ = I``) and ``A^T (A A^T + c I)^{-1} y = up(y) / (1 + c factor^2)``.
    """

    def __init__(self, factor: int) -> None:
        if not isinstance(factor, int) or factor < 1:
            raise ValueError(f"`factor` must be a positive integer, got {factor!r}")
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        _check_images(x)
        if x.shape[-2] % self.factor or x.shape[-1] % self.factor:
            raise ValueError(
                f"`x` size {tuple(x.shape[-2:])} is not divisible by the factor {self.factor}"
            )
        return F.avg_pool2d(x, self.factor)

    def _upsample(self, y: Tensor) -> Tensor:
        _check_images(y, "y")
        return y.repeat_interleave(self.factor, -2).repeat_interleave(self.factor, -1)

    def adjoint(self, y: Tensor) -> Tensor:
        return self._upsample(y) / self.factor**2

    def regularized_inverse(self, y: Tensor, damping: Damping) -> Tensor:
        return self._upsample(y) / (1 + damping * self.factor**2)

    def norm_bound(self, like: Tensor) -> float:
        return 1.0 / self.factor**2


class Denoising(LinearOperator):
    """The identity: the measurement is the image plus noise, ``y = x + sigma_y n``."""

    def forward(self, x: Tensor) -> Tensor:
        return x

    def adjoint(self, y: Tensor) -> Tensor:
        return y

    def regularized_inverse(self, y: Tensor, damping: Damping) -> Tensor:
        return y / (1 + damping)

    def norm_bound(self, like: Tensor) -> float:
        return 1.0


def gaussian_kernel_1d(kernel_size: int, std: float, dtype: torch.dtype = torch.float64) -> Tensor:
    """``g_k = exp(-k^2 / (2 std^2)) / sum``, ``k = -r..r``, ``kernel_size = 2 r + 1``."""
    offsets = torch.arange(kernel_size, dtype=dtype) - kernel_size // 2
    weights = torch.exp(-(offsets**2) / (2 * std**2))
    return weights / weights.sum()


class GaussianDeblur(LinearOperator):
    """Blur each channel with a normalized separable Gaussian kernel, same-size output.

    ``A x = k * pad(x)`` with ``padding`` "circular" (periodic) or "reflect". The kernel is
    symmetric, so with circular padding ``A`` is diagonal in the 2-D DFT with a real transfer
    function ``K`` (``K(0) = 1``, ``|K| <= 1``) and
    ``A^T (A A^T + c I)^{-1} y = IDFT(K DFT(y) / (K^2 + c + tikhonov))``. With reflect padding
    the same inverse is solved by ``cg_iterations`` steps of conjugate gradients on
    ``(A^T A + (c + tikhonov) I) x = A^T y``. ``tikhonov`` (``epsilon``) keeps the pseudo-inverse
    bounded where ``K`` is tiny; set it to 0 for the exact inverse.
    """

    def __init__(
        self,
        kernel_size: int = 7,
        blur_std: float = 1.5,
        padding: str = "circular",
        tikhonov: float = 1e-3,
        cg_iterations: int = 100,
    ) -> None:
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"`kernel_size` must be a positive odd integer, got {kernel_size}")
        if blur_std <= 0:
            raise ValueError(f"`blur_std` must be positive, got {blur_std}")
        if padding not in ("circular", "reflect"):
            raise ValueError(f"`padding` must be 'circular' or 'reflect', got {padding!r}")
        if tikhonov < 0:
            raise ValueError(f"`tikhonov` must be >= 0, got {tikhonov}")
        if cg_iterations < 1:
            raise ValueError(f"`cg_iterations` must be >= 1, got {cg_iterations}")
        self.kernel_size = kernel_size
        self.blur_std = blur_std
        self.padding = padding
        self.tikhonov = tikhonov
        self.cg_iterations = cg_iterations
        self.kernel = gaussian_kernel_1d(kernel_size, blur_std)

    @property
    def radius(self) -> int:
        return self.kernel_size // 2

    def _pad_index(self, length: int, device: torch.device) -> Tensor:
        """Source index of every padded position ``p``: ``x_pad[p] = x[index[p]]``."""
        position = torch.arange(-self.radius, length + self.radius, device=device)
        if self.padding == "circular":
            return position.remainder(length)
        if self.radius >= length:
            raise ValueError(
                f"reflect padding needs images larger than the kernel radius {self.radius}, "
                f"got a side of {length}"
            )
        reflected = position.abs()
        return torch.where(reflected > length - 1, 2 * (length - 1) - reflected, reflected)

    def _weight(self, x: Tensor) -> Tensor:
        kernel = self.kernel.to(device=x.device, dtype=x.dtype)
        return torch.outer(kernel, kernel).expand(x.shape[1], 1, -1, -1)

    def forward(self, x: Tensor) -> Tensor:
        _check_images(x)
        rows = self._pad_index(x.shape[-2], x.device)
        cols = self._pad_index(x.shape[-1], x.device)
        padded = x.index_select(-2, rows).index_select(-1, cols)
        return F.conv2d(padded, self._weight(x), groups=x.shape[1])

    def adjoint(self, y: Tensor) -> Tensor:
        _check_images(y, "y")
        padded = F.conv_transpose2d(y, self._weight(y), groups=y.shape[1])
        rows = self._pad_index(y.shape[-2], y.device)
        cols = self._pad_index(y.shape[-1], y.device)
        folded = y.new_zeros(*padded.shape[:-1], y.shape[-1]).index_add(-1, cols, padded)
        return y.new_zeros(y.shape).index_add(-2, rows, folded)

    def transfer_function(self, size: tuple[int, int], like: Tensor) -> Tensor:
        """The real DFT of the periodic kernel on a ``size`` grid, laid out for ``rfft2``."""
        rows, cols = (self._periodic_spectrum(n, like) for n in size)
        return rows[:, None] * cols[None, : size[1] // 2 + 1]

    def _periodic_spectrum(self, length: int, like: Tensor) -> Tensor:
        kernel = self.kernel.to(device=like.device, dtype=like.dtype)
        offsets = torch.arange(-self.radius, self.radius + 1, device=like.device)
        periodic = like.new_zeros(length).index_add(0, offsets.remainder(length), kernel)
        return torch.fft.fft(periodic).real

    def regularized_inverse(self, y: Tensor, damping: Damping) -> Tensor:
        _check_images(y, "y")
        if self.padding == "circular":
            size = (y.shape[-2], y.shape[-1])
            transfer = self.transfer_function(size, y)
            spectrum = torch.fft.rfft2(y) * transfer / (transfer**2 + damping + self.tikhonov)
            return torch.fft.irfft2(spectrum, s=size)
        return self._conjugate_gradient(self.adjoint(y), damping + self.tikhonov)

    def _conjugate_gradient(self, rhs: Tensor, damping: Damping) -> Tensor:
        """Solve ``(A^T A + damping I) x = rhs`` per sample with a fixed number of CG steps."""
        x = torch.zeros_like(rhs)
        residual = rhs
        direction = residual
        residual_norm = _batch_dot(residual, residual)
        for _ in range(self.cg_iterations):
            applied = self.adjoint(self.forward(direction)) + damping * direction
            alpha = residual_norm / _batch_dot(direction, applied).clamp_min(_TINY)
            x = x + alpha * direction
            residual = residual - alpha * applied
            new_norm = _batch_dot(residual, residual)
            direction = residual + new_norm / residual_norm.clamp_min(_TINY) * direction
            residual_norm = new_norm
        return x

    def norm_bound(self, like: Tensor) -> float:
        """1 for circular padding (``max |K| = 1``); for reflect, the Schur bound.

        Every row of ``A`` is a convex combination, so ``||A||_inf = 1`` and
        ``||A||^2 <= ||A||_1 ||A||_inf = max_j (A^T 1)_j``.
        """
        if self.padding == "circular":
            return 1.0
        ones = torch.ones(1, 1, *like.shape[-2:], dtype=torch.float64, device=like.device)
        return float(self.adjoint(ones).max())


def posterior_variance(t: Tensor, data_std: float) -> Tensor:
    """``r_t^2 = (1 - t)^2 s^2 / (t^2 s^2 + (1 - t)^2)``: the variance of ``x1`` given ``x_t``.

    Exact for data ``N(m, s^2 I)`` on the linear path ``x_t = (1 - t) eps + t x1``.
    """
    return (1 - t) ** 2 * data_std**2 / (t**2 * data_std**2 + (1 - t) ** 2)


def _check_common(
    operator: LinearOperator,
    measurement: Tensor,
    x: Tensor,
    noise_std: float,
    data_std: float,
    noise_estimate: str,
    eta: float,
) -> None:
    expected = operator.forward(x).shape
    if measurement.shape != expected:
        raise ValueError(
            f"`measurement` has shape {tuple(measurement.shape)}, but the operator maps `x` "
            f"{tuple(x.shape)} to {tuple(expected)}"
        )
    if noise_std < 0:
        raise ValueError(f"`noise_std` must be >= 0, got {noise_std}")
    if data_std <= 0:
        raise ValueError(f"`data_std` must be positive, got {data_std}")
    if noise_estimate not in NOISE_ESTIMATES:
        raise ValueError(
            f"`noise_estimate` must be one of {NOISE_ESTIMATES}, got {noise_estimate!r}"
        )
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"`eta` must be in [0, 1], got {eta}")


def _check_increasing(ts: Tensor) -> None:
    if ts.ndim != 1 or ts.numel() < 2:
        raise ValueError(
            f"time grid `ts` must be 1-D with at least 2 points, got shape {tuple(ts.shape)}"
        )
    if bool((ts[1:] <= ts[:-1]).any()) or bool(ts[0] < 0) or bool(ts[-1] > 1):
        raise ValueError("time grid `ts` must increase within [0, 1] (noise -> data)")


def project_to_noise_level(
    operator: LinearOperator, x: Tensor, measurement: Tensor, noise_std: float
) -> Tensor:
    """Move ``x`` onto the ball ``||A x - y|| <= noise_std sqrt(m)`` along ``A^+``.

    ``x <- x + A^+ ((1 - delta / ||r||)_+ r)`` with ``r = y - A x`` per sample and
    ``delta = noise_std sqrt(m)`` (``m`` entries per measurement). Where ``A A^+ = I`` the new
    residual norm is ``min(||r||, delta)``.
    """
    residual = measurement - operator.forward(x)
    radius = noise_std * math.sqrt(residual[0].numel())
    shrink = (1 - radius / _batch_norm(residual).clamp_min(_TINY)).clamp_min(0)
    return x + operator.pseudo_inverse(shrink * residual)


def _run_posterior_steps(
    model: VelocityModel,
    x: Tensor,
    ts: Tensor,
    callback: Callback | None,
    correct: Correction,
    noise_estimate: str,
    eta: float,
    generator: torch.Generator | None,
    model_kwargs: dict[str, Any],
) -> Tensor:
    """The shared loop: estimate, correct the data estimate, re-interpolate at the next time."""
    for i in range(len(ts) - 1):
        t, t_next = ts[i], ts[i + 1]
        u = model(x, t.to(x.dtype).expand(x.shape[0]), **model_kwargs)
        data = correct(x + (1 - t) * u, t)
        noise = x - t * u if noise_estimate == "model" else (x - t * data) / (1 - t)
        if eta > 0:
            fresh = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            noise = math.sqrt(1 - eta**2) * noise + eta * fresh
        x = (1 - t_next) * noise + t_next * data
        if callback is not None:
            callback(
                {"step": i, "t": t, "t_next": t_next, "x": x, "velocity": u, "data_estimate": data}
            )
    return x


def sample_range_null_space(
    model: VelocityModel,
    x: Tensor,
    ts: Tensor,
    callback: Callback | None = None,
    *,
    operator: LinearOperator,
    measurement: Tensor,
    noise_std: float = 0.0,
    data_std: float = 1.0,
    noise_estimate: str = "corrected",
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    final_projection: bool = True,
    **model_kwargs: Any,
) -> Tensor:
    """Posterior sampling by range-null-space projection of the data estimate (DDNM for flows).

    Each step (1 model evaluation): ``x1_hat = x + (1 - t) u``, ``eps_hat = x - t u``,

        x1 = x1_hat + A^T (A A^T + (sigma_y^2 / r_t^2) I)^{-1} (y - A x1_hat)

    (``= x1_hat + A^+ (y - A x1_hat)`` for ``sigma_y = 0``), then
    ``x_{t'} = (1 - t') eps' + t' x1`` with ``eps' = sqrt(1 - eta^2) eps_est + eta z`` and
    ``eps_est = eps_hat`` ("model", DDNM) or ``(x - t x1) / (1 - t)`` ("corrected").
    ``r_t^2`` is :func:`posterior_variance` with ``data_std``. Returns the estimate at the last
    grid time, moved by :func:`project_to_noise_level` when ``final_projection``.

    Args:
        model: velocity model ``model(x, t, **model_kwargs)``.
        x: the start, noise at ``ts[0]`` (usually 0).
        ts: increasing time grid.
        operator: the degradation ``A``.
        measurement: ``y = A x1 + sigma_y n``.
        noise_std: ``sigma_y``, the measurement noise level (0 = noiseless).
        data_std: ``s`` of the Gaussian approximation behind ``r_t^2``.
        noise_estimate: "corrected" (default: the exact posterior flow for Gaussian data) or
            "model" (DDNM's re-interpolation, which over-fits noisy measurements); the two
            agree when ``sigma_y = 0`` (see the module docstring).
        eta: weight of fresh noise in the re-interpolation (0 = deterministic).
        generator: random source of the fresh noise.
        final_projection: end on ``||A x - y|| <= sigma_y sqrt(m)``.
    """
    _check_increasing(ts)
    _check_common(operator, measurement, x, noise_std, data_std, noise_estimate, eta)

    def correct(data: Tensor, t: Tensor) -> Tensor:
        damping = noise_std**2 / posterior_variance(t, data_std)
        return data + operator.regularized_inverse(measurement - operator.forward(data), damping)

    x = _run_posterior_steps(
        model, x, ts, callback, correct, noise_estimate, eta, generator, model_kwargs
    )
    if final_projection:
        x = project_to_noise_level(operator, x, measurement, noise_std)
    return x


def sample_gradient_consistency(
    model: VelocityModel,
    x: Tensor,
    ts: Tensor,
    callback: Callback | None = None,
    *,
    operator: LinearOperator,
    measurement: Tensor,
    noise_std: float = 0.0,
    data_std: float = 1.0,
    step_size: float = 1.0,
    gradient_steps: int = 1,
    noise_estimate: str = "corrected",
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    final_projection: bool = True,
    **model_kwargs: Any,
) -> Tensor:
    """Posterior sampling with gradient data-consistency steps on the data estimate.

    Each step (1 model evaluation) takes ``gradient_steps`` steps from ``x1 = x1_hat``:

        x1 <- x1 - zeta_t (A^T (A x1 - y) + (sigma_y^2 / r_t^2) (x1 - x1_hat)),
        zeta_t = step_size * r_t^2 / (r_t^2 L + sigma_y^2),

    with ``L`` the operator's :meth:`~LinearOperator.norm_bound`; for ``sigma_y = 0`` this is
    ``x1 <- x1 - (step_size / L) A^T (A x1 - y)``. Then, as in
    :func:`sample_range_null_space` (same remaining arguments),
    ``x_{t'} = (1 - t') eps' + t' x1`` and an optional final projection. ``step_size`` in (0, 2) keeps the descent stable; only ``A`` and ``A^T`` are
    used, so it also suits operators whose inverse is expensive.
    """
    _check_increasing(ts)
    _check_common(operator, measurement, x, noise_std, data_std, noise_estimate, eta)
    if not 0.0 < step_size < 2.0:
        raise ValueError(f"`step_size` must be in (0, 2), got {step_size}")
    if gradient_steps < 1:
        raise ValueError(f"`gradient_steps` must be >= 1, got {gradient_steps}")
    lipschitz = operator.norm_bound(x)

    def correct(data: Tensor, t: Tensor) -> Tensor:
        variance = posterior_variance(t, data_std)
        zeta = step_size * variance / (variance * lipschitz + noise_std**2)
        weight = noise_std**2 / variance
        estimate = data
        for _ in range(gradient_steps):
            misfit = operator.adjoint(operator.forward(estimate) - measurement)
            estimate = estimate - zeta * (misfit + weight * (estimate - data))
        return estimate

    x = _run_posterior_steps(
        model, x, ts, callback, correct, noise_estimate, eta, generator, model_kwargs
    )
    if final_projection:
        x = project_to_noise_level(operator, x, measurement, noise_std)
    return x


INVERSE_SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "projection": sample_range_null_space,
    "gradient": sample_gradient_consistency,
}


def solve_inverse_problem(
    model: VelocityModel,
    x0: Tensor,
    operator: LinearOperator,
    measurement: Tensor,
    method: str = "projection",
    nfe: int | None = 16,
    grid: str | Sequence[float] | Tensor | None = None,
    grid_kwargs: dict[str, Any] | None = None,
    noise_std: float = 0.0,
    callback: Callback | None = None,
    enable_grad: bool = False,
    solver_options: dict[str, Any] | None = None,
    **model_kwargs: Any,
) -> SampleResult:
    """Sample ``x1 | y`` for ``y = A x1 + noise_std n`` from noise ``x0`` with a flow prior.

    Args:
        model: velocity model ``model(x, t, **model_kwargs)``.
        x0: noise at t = 0, shaped like the image.
        operator: the degradation ``A``.
        measurement: ``y``.
        method: "projection" (:func:`sample_range_null_space`) or "gradient"
            (:func:`sample_gradient_consistency`); both use 1 evaluation per step.
        nfe: model evaluations (= steps); ignored when ``grid`` gives explicit times.
        grid: ``None``/a grid name for :func:`mmflow.timesteps.make_grid`, or explicit times.
        grid_kwargs: extra grid arguments, e.g. ``{"shift": 3.0}``.
        noise_std: the measurement noise level ``sigma_y``.
        callback: called after every step with ``step, t, t_next, x, velocity, data_estimate``.
        enable_grad: keep the autograd graph (off by default, as in :func:`~mmflow.sampling.sample`).
        solver_options: the method's own options (``eta``, ``data_std``, ``step_size``, ...).

    Returns:
        A :class:`~mmflow.sampling.SampleResult` with the counted ``nfe``.
    """
    if method not in INVERSE_SAMPLERS:
        raise ValueError(f"unknown `method` {method!r}; known: {', '.join(INVERSE_SAMPLERS)}")
    solver = INVERSE_SAMPLERS[method]
    options = _checked_options(method, solver, dict(solver_options or {}), model_kwargs)
    if grid is None or isinstance(grid, str):
        if nfe is None or nfe < 1:
            raise ValueError(f"`nfe` must be a positive integer with a named grid, got {nfe}")
        ts = make_grid(grid or "uniform", nfe, dtype=torch.float64, **dict(grid_kwargs or {}))
    else:
        # A list of Python floats becomes float64 directly, not by way of float32.
        times = grid if isinstance(grid, Tensor) else torch.tensor(grid, dtype=torch.float64)
        ts = make_grid(times, dtype=torch.float64)
    ts = ts.to(device=x0.device, dtype=torch.promote_types(x0.dtype, torch.float32))
    counted = NFECounter(model)
    with torch.set_grad_enabled(enable_grad):
        samples = solver(
            counted,
            x0,
            ts,
            callback,
            operator=operator,
            measurement=measurement,
            noise_std=noise_std,
            **options,
            **model_kwargs,
        )
    return SampleResult(samples=samples, nfe=counted.count, grid=ts)


def _checked_options(
    method: str,
    solver: Callable[..., Tensor],
    options: dict[str, Any],
    model_kwargs: dict[str, Any],
) -> dict[str, Any]:
    """Refuse options the method does not name, or that collide with arguments or model inputs."""
    fixed = {"model", "x", "ts", "callback", "operator", "measurement", "noise_std"}
    named = {
        name
        for name, parameter in inspect.signature(solver).parameters.items()
        if parameter.kind == parameter.KEYWORD_ONLY and name not in fixed
    }
    unknown = sorted(set(options) - named)
    if unknown:
        raise ValueError(
            f"inverse method `{method}` has no option {', '.join(map(repr, unknown))}; "
            f"its options: {', '.join(sorted(named))}"
        )
    clash = sorted(set(model_kwargs) & (named | fixed))
    if clash:
        raise ValueError(f"{', '.join(clash)} given as model input, but it is a solver argument")
    return options
