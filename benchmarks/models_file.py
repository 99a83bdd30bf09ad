"""The ``--models`` file of the comparison benchmarks: a YAML list of model entries."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

import yaml


def read_model_entries(
    path: str | Path, allowed: Collection[str], required: Collection[str]
) -> list[dict[str, Any]]:
    """The entries of a models file; a missing file, an empty list, unknown keys and missing
    ones are errors naming the file (and the entry)."""
    path = Path(path)
    try:
        entries = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: models file not found") from None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: expected a non-empty list of models")
    for position, entry in enumerate(entries):
        unknown = set(entry) - set(allowed)
        missing = set(required) - set(entry)
        if unknown or missing:
            raise ValueError(
                f"{path}: entry {position}: unknown keys {sorted(unknown)}, missing {sorted(missing)}"
            )
    return entries
