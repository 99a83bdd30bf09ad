"""Mesh files out and PNG previews."""

from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from modalities.shape import Primitive, load_mesh
from modalities.shape.media import render_views, save_mesh


@pytest.mark.parametrize("suffix", [".glb", ".obj", ".ply", ".stl", ".off"])
def test_saved_meshes_load_back_as_the_same_solid(tmp_path: Path, suffix: str):
    torus = Primitive("torus", radius=0.5, minor_radius=0.2, resolution=24).mesh()
    path = save_mesh(torus, tmp_path / f"torus{suffix}")
    loaded = load_mesh(path)
    assert loaded.volume == pytest.approx(torus.volume, rel=1e-5)
    assert len(loaded.faces) == len(torus.faces)


def test_an_unknown_suffix_is_refused(tmp_path: Path):
    with pytest.raises(ValueError, match=r"torus\.xyz: unknown mesh suffix"):
        save_mesh(Primitive("torus").mesh(), tmp_path / "torus.xyz")


def test_previews_show_the_shape_differently_from_each_side(tmp_path: Path):
    """An L-shaped solid (two boxes) looks different from opposite sides."""
    long_box = trimesh.creation.box(extents=(1.0, 0.2, 0.2))
    upright = trimesh.creation.box(extents=(0.2, 0.2, 0.8))
    upright.apply_translation((0.4, 0.0, 0.5))
    shape = trimesh.util.concatenate([long_box, upright])
    path = render_views(shape, tmp_path / "views.png", azimuths=(0, 90, 180), size=128, up="z")
    image = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
    assert image.shape == (128, 3 * 128)
    views = [image[:, i * 128 : (i + 1) * 128] for i in range(3)]
    assert all((view < 250).mean() > 0.02 for view in views)  # something is drawn
    assert np.abs(views[0] - views[2]).mean() > 1  # opposite sides differ
    with pytest.raises(ValueError, match="`up` must be one of"):
        render_views(shape, tmp_path / "bad.png", up="w")
    with pytest.raises(ValueError, match="without faces"):
        render_views(trimesh.Trimesh(), tmp_path / "empty.png")
