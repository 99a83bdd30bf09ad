"""Files the core and every modality write and read: caches, checksums, atomic writes, weights.

Every writer goes through :func:`atomic_write`: the content is written to a temporary file in
the same folder and moved over the target with ``os.replace``, so a reader (or a run killed
mid-write) never sees half a file. Readers raise one clear error naming the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from mmflow.numerics import first_non_finite

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """Where prepared data is cached: ``$MMFLOW_CACHE`` if set, else ``~/.cache/mmflow``."""
    return Path(os.environ.get("MMFLOW_CACHE", Path.home() / ".cache" / "mmflow"))


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(temporary_path)``, then move the result over ``path`` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp{path.suffix}")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def write_json(path: str | Path, value: Any, indent: int = 2) -> Path:
    """Write ``value`` as JSON, atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(value, indent=indent)))


def reusable_manifest(
    path: str | Path, settings: dict[str, Any], sources: dict[str, Any], what: str
) -> dict[str, Any] | None:
    """The manifest of a prepared cache at ``path`` if it records these ``settings`` and these
    source checksums, else ``None`` -- with a log line naming ``what`` and the file when one
    exists but differs, so a stale cache is rebuilt, never reused silently. A manifest that
    is not valid JSON counts as differing."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        recorded = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        recorded = None
    if (
        isinstance(recorded, dict)
        and recorded.get("settings") == settings
        and recorded.get("sources") == sources
    ):
        return recorded
    log.warning("%s: settings or source checksums differ from %s; rebuilding", what, path)
    return None


def read_json(path: str | Path, written_by: str = "") -> Any:
    """Parse a JSON file; a missing or malformed file raises an error naming it."""
    path = Path(path)
    hint = f" (written by {written_by})" if written_by else ""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file missing{hint}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None


def save_weights(path: str | Path, tensors: dict[str, Tensor]) -> Path:
    """Write tensors (moved to the CPU, made contiguous) as safetensors, atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp)))


def load_weights(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Tensor]:
    """Read a safetensors file; a missing or unreadable file raises an error naming it."""
    path = Path(path)
    try:
        return load_file(str(path), device=str(map_location))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: weights file missing") from None
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path}: not a readable safetensors file ({error})") from None


def read_checkpoint(
    path: str | Path, map_location: str | torch.device | None = "cpu"
) -> dict[str, Any]:
    """Read a Lightning checkpoint as data (``weights_only=True``: nothing in it is run).

    A missing file, a truncated or foreign file, or one whose pickle asks for code raises an
    error naming the file.
    """
    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: checkpoint not found") from None
    except pickle.UnpicklingError as error:
        asked = re.search(r"GLOBAL ([\w.]+)", str(error))
        if asked is None:
            raise ValueError(f"{path}: not a readable checkpoint (not a PyTorch file)") from None
        raise ValueError(
            f"{path}: not a data-only checkpoint (it asks for `{asked.group(1)}`, and mmflow "
            "never runs code from a checkpoint)"
        ) from None
    except EOFError:
        raise ValueError(f"{path}: not a readable checkpoint (empty or truncated)") from None
    except (RuntimeError, OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"{path}: not a readable checkpoint (truncated or not a PyTorch file: {first})"
        ) from None
    if not isinstance(checkpoint, dict):
        raise ValueError(  # noqa: TRY004 (a bad file, reported as a user error)
            f"{path}: not a checkpoint (a {type(checkpoint).__name__}, not a dict)"
        )
    return checkpoint


def check_finite(weights: dict[str, Tensor], source: str | Path) -> None:
    """Refuse weights with a NaN or an infinity, naming ``source`` and the first such tensor."""
    bad = first_non_finite(weights)
    if bad is not None:
        raise ValueError(f"{source}: weight `{bad}` holds NaN or infinite values")


def _number_kind(tensor: Tensor) -> str:
    if tensor.is_floating_point():
        return "float"
    return "complex" if tensor.is_complex() else "bool" if tensor.dtype == torch.bool else "int"


def load_state(module: torch.nn.Module, weights: dict[str, Tensor], source: str | Path) -> None:
    """``module.load_state_dict(weights, strict=True)`` with mismatches (names, shapes, a
    number kind for another: integers for floats) and non-finite values reported against
    ``source``; floating-point precisions convert (a float16 file loads into float32)."""
    check_finite(weights, source)
    expected = module.state_dict()
    for name, tensor in weights.items():
        own = expected.get(name)
        if own is not None and _number_kind(own) != _number_kind(tensor):
            raise ValueError(
                f"{source}: weight `{name}` is {tensor.dtype}, the model holds {own.dtype}"
            )
    try:
        module.load_state_dict(weights, strict=True)
    except RuntimeError as error:
        details = " ".join(line.strip() for line in str(error).splitlines()[1:])
        raise ValueError(f"{source}: weights do not fit the configured model: {details}") from None
