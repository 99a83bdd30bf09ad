"""Plumbing the sampler modules share (private: users import from :mod:`mmflow.sampling`).

- the model protocol and its calls: ``model(x, t, **kwargs)`` with ``t`` broadcast to ``[B]``;
- grid checks and the per-step callback;
- :class:`NFECounter`, which counts model evaluations instead of inferring them;
- fingerprints of models and values, and :class:`GridCache`, the memory + JSON cache of the
  grids BOSS and grid search fit to a model.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from mmflow.files import default_cache_dir, write_json

Callback = Callable[[dict[str, Any]], None]


class VelocityModel(Protocol):
    """Anything called as ``model(x, t, **kwargs)`` with ``t`` of shape ``[B]``."""

    def __call__(self, x: Tensor, t: Tensor, **kwargs: Any) -> Tensor: ...


def batched_time(t: Tensor, x: Tensor) -> Tensor:
    """Broadcast a scalar grid time to the ``[B]`` time tensor the model expects."""
    return t.to(dtype=x.dtype).expand(x.shape[0])


def velocity_at(model: VelocityModel, x: Tensor, t: Tensor, model_kwargs: dict[str, Any]) -> Tensor:
    """``model(x, t * ones(B), **model_kwargs)``."""
    return model(x, batched_time(t, x), **model_kwargs)


def check_grid(ts: Tensor) -> None:
    """A time grid is 1-D with at least two times."""
    if ts.ndim != 1 or ts.numel() < 2:
        raise ValueError(
            f"time grid `ts` must be 1-D with at least 2 points, got shape {tuple(ts.shape)}"
        )


def check_increasing(ts: Tensor) -> None:
    """A grid that must run forward, from noise towards data, inside [0, 1]."""
    check_grid(ts)
    if bool((ts[1:] <= ts[:-1]).any()) or bool(ts[0] < 0) or bool(ts[-1] > 1):
        raise ValueError("time grid `ts` must increase within [0, 1] (noise -> data)")


def check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}")


def report_step(
    callback: Callback | None, i: int, ts: Tensor, x: Tensor, velocity: Tensor, **extra: Any
) -> None:
    """Call ``callback`` after step ``i`` with ``step, t, t_next, x, velocity`` and ``extra``."""
    if callback is not None:
        callback(
            {"step": i, "t": ts[i], "t_next": ts[i + 1], "x": x, "velocity": velocity, **extra}
        )


class NFECounter:
    """Wraps a velocity model and counts how often it is evaluated."""

    def __init__(self, model: Callable[..., Tensor]) -> None:
        self.model = model
        self.count = 0

    def __call__(self, x: Tensor, t: Tensor, **kwargs: Any) -> Tensor:
        self.count += 1
        return self.model(x, t, **kwargs)


def with_fixed_options(fn: Callable[..., Any], **fixed: Any) -> Callable[..., Any]:
    """``fn`` with options fixed by its registered name; they leave its signature, so
    ``sample(..., solver_options=...)`` refuses to change them."""

    @functools.wraps(fn)
    def bound(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **fixed, **kwargs)

    signature = inspect.signature(fn)
    kept = [p for name, p in signature.parameters.items() if name not in fixed]
    bound.__signature__ = signature.replace(parameters=kept)  # type: ignore[attr-defined]
    return bound


def _hash_value(digest: Any, value: Any) -> None:
    """Feed tensors (dtype, shape, bytes), containers (recursively) and reprs into ``digest``."""
    if isinstance(value, Tensor):
        flat = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"tensor:{flat.dtype}:{tuple(value.shape)}:".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        for key in sorted(value, key=str):
            digest.update(f"key:{key}:".encode())
            _hash_value(digest, value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(f"sequence:{len(value)}:".encode())
        for item in value:
            _hash_value(digest, item)
    else:
        digest.update(f"value:{value!r}:".encode())


def digest(value: Any) -> str:
    """SHA-256 (hex) of tensors, containers of them and plain values, for cache keys."""
    hasher = hashlib.sha256()
    _hash_value(hasher, value)
    return hasher.hexdigest()


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of a module's state dict (names, dtypes, shapes, bytes) and plain settings.

    Besides the tensors, the class name and the public ``bool``/``int``/``float``/``str``
    attributes of every submodule are hashed, so configuration kept outside the state dict
    (a rate, a guidance scale, train/eval mode) changes the fingerprint too.
    """
    settings = [
        (name, type(module).__qualname__, _plain_attributes(module))
        for name, module in model.named_modules()
    ]
    return digest({"settings": settings, "state": dict(model.state_dict())})


def _plain_attributes(module: nn.Module) -> dict[str, Any]:
    return {
        key: value
        for key, value in vars(module).items()
        if not key.startswith("_") and isinstance(value, (bool, int, float, str))
    }


class GridCache:
    """Values computed for a model, kept in memory (least recently used first out) and as
    JSON files in ``$MMFLOW_CACHE/<folder>`` (or a given folder).

    A value is looked up by a key (a digest of everything it depends on) and the file path
    derived from it; ``read(path)`` validates a file and returns its value, raising an error
    that names the file when it does not fit.
    """

    def __init__(self, folder: str, size: int = 64) -> None:
        self.folder = folder
        self.size = size
        self.memory: OrderedDict[str, list[Any]] = OrderedDict()

    def directory(self, cache_dir: str | Path | None) -> Path:
        return Path(cache_dir) if cache_dir is not None else default_cache_dir() / self.folder

    def lookup(self, key: str, path: Path, read: Callable[[Path], list[Any]]) -> list[Any] | None:
        """The cached value: from memory, else from ``path`` (then remembered), else ``None``."""
        if key not in self.memory and path.exists():
            self._remember(key, read(path))
        if key not in self.memory:
            return None
        self.memory.move_to_end(key)
        return self.memory[key]

    def store(self, key: str, path: Path, value: list[Any], entry: dict[str, Any]) -> None:
        """Write ``entry`` (the value and what it was computed from) to ``path``; remember it."""
        write_json(path, entry)
        self._remember(key, value)

    def clear(self) -> None:
        """Forget the values kept in memory (files in the cache folder stay)."""
        self.memory.clear()

    def _remember(self, key: str, value: list[Any]) -> None:
        self.memory[key] = value
        self.memory.move_to_end(key)
        while len(self.memory) > self.size:
            self.memory.popitem(last=False)
