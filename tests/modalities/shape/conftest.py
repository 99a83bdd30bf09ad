"""Shape fixtures: the real CGAL demo meshes that `make test` unpacks."""

from __future__ import annotations

from pathlib import Path

import pytest

CGAL_MESHES = Path(__file__).resolve().parents[3] / ".cache" / "data" / "cgal-meshes"


@pytest.fixture(scope="session")
def cgal_meshes() -> Path:
    """The folder of CGAL's demo meshes; a clear failure (never a skip) when it is missing."""
    if not (CGAL_MESHES / "armadillo.off").is_file():
        pytest.fail(
            f"the CGAL demo meshes are missing from {CGAL_MESHES}: run `make cgal-meshes` "
            "(it unpacks Debian's libcgal-demo package; `make test` does it too)"
        )
    return CGAL_MESHES
