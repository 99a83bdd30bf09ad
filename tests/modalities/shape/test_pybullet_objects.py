"""pybullet's objects as a mesh folder: what is written, that it is closed and has the right SDF,
that MeshFolder reads it, and that it is deterministic."""

import logging
import sys
from pathlib import Path

import numpy as np
import pytest

from modalities.shape import (
    MeshFolder,
    SDFSettings,
    load_mesh,
    make_watertight,
    normalise_mesh,
    signed_distance,
)
from modalities.shape.pybullet_objects import (
    FAMILIES,
    pybullet_data_dir,
    write_pybullet_folder,
)

#: The stand-alone objects that are closed solids, distinct and fused without faults.
OBJECTS = {
    "bunny",
    "cube",
    "domino",
    "duck",
    "duck_vhacd",
    "jenga",
    "soccerball",
    "sphere_smooth",
    "stone",
    "torus-torus_textured",
    "toys-concave_box",
    "toys-cylinder",
    "toys-prism",
    "toys-shape_sorter",
    "tray-tray_textured",
    "tray-tray_textured2",
    "tray-tray_textured4",
}


@pytest.fixture(scope="module")
def data_dir() -> Path:
    """pybullet's data folder; a clear failure (never a skip) when pybullet is missing."""
    try:
        return pybullet_data_dir()
    except ModuleNotFoundError as error:
        pytest.fail(f"{error} (`make test` installs the shape extra, which has it)")


@pytest.fixture(scope="module")
def written(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All stand-alone objects, the first 30 procedural objects and 10 robot parts."""
    root = tmp_path_factory.mktemp("pybullet")
    write_pybullet_folder(root, families=("objects",), data_dir=data_dir)
    write_pybullet_folder(root, max_objects=30, families=("random",), data_dir=data_dir)
    write_pybullet_folder(root, max_objects=10, families=("robot_parts",), data_dir=data_dir)
    return root


def test_the_closed_distinct_objects_are_written_and_the_rest_counted(
    data_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    with caplog.at_level(logging.INFO, logger="modalities.shape.pybullet_objects"):
        write_pybullet_folder(tmp_path, families=("objects",), data_dir=data_dir)
    assert {p.stem for p in (tmp_path / "objects").glob("*.obj")} == OBJECTS
    # 28 sources: 7 open or non-manifold, 3 copies of another object, and the teddy, whose
    # 15 convex parts fuse into a surface load_mesh finds 3 open edges in.
    assert "pybullet objects: wrote 17 objects, left out 11" in caplog.text
    assert "table_square/table.obj: the same mesh as one already written" in caplog.text
    assert "teddy2_VHACD_CHs.obj: its fused parts are not closed" in caplog.text
    assert "lego/lego.obj: not watertight after repair" in caplog.text


def test_max_objects_takes_the_first_closed_objects_in_path_order(written: Path):
    # 025's fused parts have zero-area faces; without them load_mesh finds 3 open edges.
    expected = [f"{i:03d}" for i in range(31) if i != 25]
    assert sorted(p.stem for p in (written / "random").glob("*.obj")) == expected
    robots = sorted(p.stem for p in (written / "robot_parts").glob("*.obj"))
    assert len(robots) == 10 and robots[:3] == ["a1-hip", "aliengo-hip", "aliengo-thigh"]
    assert robots[-1] == "franka_panda-collision-link3"  # a1's other 4 links are not closed


def test_every_written_mesh_loads_closed_and_mesh_folder_reads_them_all(
    written: Path, tmp_path: Path
):
    files = sorted(written.rglob("*.obj"))
    assert len(files) == 17 + 30 + 10
    for path in files:
        mesh = load_mesh(path)
        assert mesh.is_watertight and mesh.is_winding_consistent and mesh.volume > 0, path
    data = MeshFolder(
        str(written),
        sdf=SDFSettings(num_surface=64, num_near=64, num_uniform=64),
        num_points=32,
        num_surface=16,
        cache_dir=str(tmp_path),
        val_fraction=0.0,
        test_fraction=0.0,
    )
    assert data.num_classes == 3 and data.class_names == sorted(FAMILIES)
    assert len(data.files["train"]) == 57 and not data.skipped
    assert sorted(data.datasets["train"].labels) == [0] * 17 + [1] * 30 + [2] * 10


@pytest.mark.parametrize("source", ["duck_vhacd.obj", "random_urdfs/000/000.obj"])
def test_fused_parts_have_the_signed_distance_of_their_union(data_dir: Path, source: str):
    """Overlapping convex parts: the sign of the union is that of the smallest part SDF. The
    concatenated parts get it wrong around the buried faces; the fused mesh gets it right."""
    mesh, normalisation = normalise_mesh(
        make_watertight(load_mesh(data_dir / source, repair=False))
    )
    parts = mesh.split(only_watertight=False)
    assert len(parts) == 5
    rng = np.random.default_rng(0)
    near = mesh.sample(3000, seed=0) + rng.normal(0, 0.05, (3000, 3))
    points = np.concatenate([rng.uniform(-1, 1, (3000, 3)), near])
    union = np.min([signed_distance(part, points) for part in parts], axis=0)
    clear = np.abs(union) > 1e-6
    concatenated = signed_distance(mesh, points)
    fused_mesh = load_mesh(data_dir / source)
    fused_mesh.apply_translation(-np.asarray(normalisation.centre))
    fused_mesh.apply_scale(normalisation.scale)
    fused = signed_distance(fused_mesh, points)
    assert (np.sign(concatenated) != np.sign(union))[clear].mean() > 0.005
    assert (np.sign(fused) == np.sign(union))[clear].all()
    outside = union > 0  # outside a union, its distance is the smallest distance to a part
    np.testing.assert_allclose(fused[outside], union[outside], atol=1e-6)


def test_writing_is_deterministic_and_never_mixes_two_calls(written: Path, tmp_path: Path):
    again = write_pybullet_folder(tmp_path, max_objects=10, families=("random",))
    rewritten = sorted((again / "random").glob("*.obj"))
    assert len(rewritten) == 10
    for path in rewritten:
        assert (written / "random" / path.name).read_bytes() == path.read_bytes(), path.name
    with pytest.raises(FileExistsError, match="random: already holds meshes"):
        write_pybullet_folder(tmp_path, max_objects=1, families=("random",))
    with pytest.raises(ValueError, match="subset of"):
        write_pybullet_folder(tmp_path / "other", families=("chairs",))


def test_a_missing_pybullet_names_the_install_command(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "pybullet_data", None)
    with pytest.raises(ModuleNotFoundError, match=r"`pip install pybullet`"):
        write_pybullet_folder("unused")
