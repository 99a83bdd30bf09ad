"""Loading, repairing, refusing and normalising meshes."""

from pathlib import Path

import numpy as np
import pytest
import trimesh

from modalities.shape import (
    MeshError,
    fuse_parts,
    load_mesh,
    make_watertight,
    normalise_mesh,
    signed_distance,
)


def box() -> trimesh.Trimesh:
    return trimesh.creation.box(extents=(2.0, 1.0, 0.5))


@pytest.mark.parametrize("suffix", ["obj", "off", "ply", "stl", "glb"])
def test_every_format_loads_as_the_same_closed_mesh(tmp_path: Path, suffix: str):
    path = tmp_path / f"box.{suffix}"
    box().export(path)
    mesh = load_mesh(path)
    assert mesh.is_watertight and mesh.volume == pytest.approx(1.0)
    np.testing.assert_allclose(mesh.bounds, box().bounds, atol=1e-6)


def test_a_scene_of_several_parts_is_concatenated(tmp_path: Path):
    second = trimesh.creation.icosphere(radius=0.3)
    second.apply_translation((3.0, 0.0, 0.0))
    scene = trimesh.Scene([box(), second])
    scene.export(tmp_path / "two.glb")
    mesh = load_mesh(tmp_path / "two.glb")
    assert mesh.volume == pytest.approx(1.0 + second.volume, rel=1e-6)


def test_overlapping_parts_are_fused_into_the_sdf_of_their_union(tmp_path: Path):
    """Two unit cubes overlapping by half: the union is a 1.5 x 1 x 1 box, volume 1.5. The
    concatenated parts give points inside the overlap the distance to a buried face (0.25 at
    the centre of the overlap); the fused mesh gives the box's exact -0.5."""
    first, second = trimesh.creation.box(), trimesh.creation.box()
    second.apply_translation((0.5, 0.0, 0.0))
    trimesh.util.concatenate([first, second]).export(tmp_path / "two.obj")
    mesh = load_mesh(tmp_path / "two.obj")
    assert len(mesh.split(only_watertight=False)) == 1
    assert mesh.volume == pytest.approx(1.5)
    centre_of_overlap = np.array([[0.25, 0.0, 0.0]])
    assert signed_distance(mesh, centre_of_overlap)[0] == pytest.approx(-0.5)
    raw = make_watertight(load_mesh(tmp_path / "two.obj", repair=False))
    assert abs(signed_distance(raw, centre_of_overlap)[0]) == pytest.approx(0.25)


def test_a_part_around_no_volume_is_refused_naming_the_file():
    flat = trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [0, 1, 0]], [[0, 1, 2], [0, 2, 1]])
    flat.apply_translation((3.0, 0.0, 0.0))
    mesh = trimesh.util.concatenate([box(), flat])
    with pytest.raises(MeshError, match="cup.obj: 1 of its 2 parts enclose no volume"):
        fuse_parts(mesh, "cup.obj")


def test_what_trimesh_can_repair_is_repaired():
    triangles = box().triangles.reshape(-1, 3)
    unmerged = trimesh.Trimesh(triangles, np.arange(36).reshape(12, 3), process=False)
    assert not unmerged.is_watertight
    assert make_watertight(unmerged).is_watertight
    holed = trimesh.creation.icosphere(subdivisions=2)
    holed.update_faces(np.arange(1, len(holed.faces)))
    assert not holed.is_watertight
    assert make_watertight(holed).is_watertight
    inverted = box()
    inverted.invert()
    assert inverted.volume < 0
    assert make_watertight(inverted).volume == pytest.approx(1.0)


def test_an_open_mesh_is_refused_naming_the_file(tmp_path: Path):
    tube = trimesh.creation.cylinder(radius=0.5, height=1.0, sections=32)
    sides = np.abs(tube.face_normals[:, 2]) < 0.5
    tube.update_faces(sides)
    path = tmp_path / "tube.obj"
    tube.export(path)
    with pytest.raises(
        MeshError,
        match=r"tube\.obj: not watertight after repair \(open edges: 64, non-manifold edges: 0",
    ):
        load_mesh(path)


def test_a_non_manifold_mesh_is_refused():
    first, second = box(), box()
    second.apply_translation((2.0, 1.0, 0.0))  # the two boxes share one edge
    joined = trimesh.util.concatenate([first, second])
    with pytest.raises(MeshError, match="joined: not watertight .*non-manifold edges: 1,"):
        make_watertight(joined, "joined")


def test_a_closed_surface_around_no_volume_is_refused():
    flat = trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [0, 1, 0]], [[0, 1, 2], [0, 2, 1]], process=False)
    assert flat.is_watertight
    with pytest.raises(MeshError, match=r"flat: encloses no volume \(volume 0\)"):
        make_watertight(flat, "flat")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.obj", b"", "empty file"),
        ("words.obj", b"this is not a mesh\n", "no triangles"),
        ("noise.ply", bytes(range(256)) * 4, "not a readable mesh|no triangles"),
        (
            "nan.obj",
            b"v 0 0 0\nv 1 0 0\nv 0 1 0\nv nan 0 1\nf 1 2 3\nf 1 2 4\nf 1 3 4\nf 2 3 4\n",
            "1 vertices have non-finite",
        ),
    ],
)
def test_files_that_are_not_meshes_are_refused(tmp_path: Path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(MeshError, match=rf"{name}: ({message})"):
        load_mesh(path)


def test_a_missing_file_is_refused(tmp_path: Path):
    with pytest.raises(MeshError, match=r"nowhere\.obj: no such file"):
        load_mesh(tmp_path / "nowhere.obj")


def test_normalisation_centres_and_scales_the_longest_side():
    mesh = box()
    mesh.apply_translation((5.0, -2.0, 1.0))
    moved, normalisation = normalise_mesh(mesh, margin=0.9)
    np.testing.assert_allclose(moved.bounds, [[-0.9, -0.45, -0.225], [0.9, 0.45, 0.225]])
    assert normalisation.centre == pytest.approx((5.0, -2.0, 1.0))
    assert normalisation.scale == pytest.approx(0.9)
    mapped = (mesh.vertices - np.asarray(normalisation.centre)) * normalisation.scale
    np.testing.assert_allclose(mapped, moved.vertices)
    with pytest.raises(ValueError, match="margin"):
        normalise_mesh(mesh, margin=1.5)
