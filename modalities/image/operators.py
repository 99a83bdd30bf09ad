"""Image degradations for inverse problems: operators on image batches ``[B, C, H, W]``.

Each is a :class:`mmflow.sampling.LinearOperator` (``A x``, ``A^T y``, the regularized inverse
``A^T (A A^T + c I)^{-1} y`` and a bound ``L >= ||A||^2``) for the core's posterior samplers::

    operator = SuperResolution(4)
    y = operator.measure(images, noise_std=0.05)
    sample(model, x0, "inverse_projection", nfe=20,
           solver_options={"operator": operator, "measurement": y, "noise_std": 0.05})

- :class:`Inpainting`: keep the pixels of a mask (boxes, random pixels);
- :class:`SuperResolution`: average pooling by an integer factor;
- :class:`GaussianDeblur`: a separable Gaussian blur with circular or reflect padding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mmflow.sampling import LinearOperator
from mmflow.sampling.inverse import Damping

__all__ = ["GaussianDeblur", "Inpainting", "SuperResolution", "gaussian_kernel_1d"]

_TINY = 1e-30


def _check_images(x: Tensor, name: str = "x") -> None:
    if x.ndim != 4:
        raise ValueError(f"`{name}` must be an image batch [B, C, H, W], got {tuple(x.shape)}")


def _batch_dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample inner product ``<a_i, b_i>`` as ``[B, 1, 1, 1]``."""
    return (a * b).flatten(1).sum(1).view(-1, 1, 1, 1)


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
