"""Folders of meshes as SDF examples: classes, splits, refusals and exact augmentation."""

import logging
import math
from pathlib import Path

import pytest
import torch

from modalities.shape import (
    PRIMITIVE_KINDS,
    Augmentation,
    MeshError,
    MeshFolder,
    Primitive,
    SDFSettings,
    duplicate_groups,
    find_mesh_files,
    write_primitive_folder,
)

SMALL = SDFSettings(num_surface=256, num_near=256, num_uniform=256)


@pytest.fixture(scope="module")
def primitives(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_primitive_folder(tmp_path_factory.mktemp("primitives"), per_kind=4, seed=0)


def folder(root: Path, cache: Path, **kwargs) -> MeshFolder:
    settings = {"num_points": 64, "num_surface": 32, "batch_size": 5, "cache_dir": str(cache)}
    return MeshFolder(str(root), sdf=SMALL, **{**settings, **kwargs})


def test_sub_folders_are_classes_and_splits_are_seeded(primitives: Path, tmp_path: Path):
    files, labels, names = find_mesh_files(primitives)
    assert names == sorted(PRIMITIVE_KINDS) and len(files) == 20
    assert labels == sorted(labels) and set(labels) == set(range(5))
    data = folder(primitives, tmp_path, val_fraction=0.2, test_fraction=0.2)
    assert data.num_classes == 5
    assert [len(data.files[s]) for s in ("train", "val", "test")] == [12, 4, 4]
    again = folder(primitives, tmp_path, val_fraction=0.2, test_fraction=0.2)
    again.setup()
    assert again.files == data.files
    other = folder(primitives, tmp_path, val_fraction=0.2, test_fraction=0.2, seed=1)
    other.setup()
    assert other.files["val"] != data.files["val"]


def test_copies_of_a_shape_stay_in_one_split(primitives: Path, tmp_path: Path):
    """A translated and vertex-shuffled copy, and a finer tessellation of the same box, are
    one group; every seed puts the group in one split. A box 20 % longer on one side is not a copy.
    Normalisation removes size, so the fixture's four spheres are copies too."""
    root = tmp_path / "shapes"
    for kind in PRIMITIVE_KINDS:
        (root / kind).mkdir(parents=True)
        for source in sorted((primitives / kind).iterdir()):
            (root / kind / source.name).write_bytes(source.read_bytes())
    box = Primitive("box", extents=(0.4, 0.6, 0.8))
    mesh = box.mesh()
    mesh.export(root / "box" / "copy_a.obj")
    moved = mesh.copy()
    moved.apply_translation([0.3, -0.2, 0.1])
    moved.faces = moved.faces[torch.randperm(len(moved.faces)).numpy()]
    moved.export(root / "box" / "copy_b.obj")
    mesh.subdivide().export(root / "box" / "copy_c.obj")
    Primitive("box", extents=(0.4, 0.72, 0.8)).mesh().export(root / "box" / "longer.off")
    copies = {"copy_a.obj", "copy_b.obj", "copy_c.obj"}
    for seed in range(6):
        data = folder(
            root,
            tmp_path / "cache",
            val_fraction=0.25,
            test_fraction=0.25,
            seed=seed,
            duplicate_tolerance=0.01,
        )
        data.setup()
        holding = [s for s, files in data.files.items() if copies & {f.name for f in files}]
        assert len(holding) == 1, (seed, data.files)
        assert copies <= {f.name for f in data.files[holding[0]]}
        assert sum(len(files) for files in data.files.values()) == 24
    files, samples, _ = data._load_all()
    groups = [{files[i].name for i in group} for group in duplicate_groups(samples, 0.01)]
    assert copies in groups
    spheres = [group for group in groups if len(group) == 4]
    assert len(spheres) == 1, "the four spheres are one shape once normalised"


def test_batches_hold_surface_points_and_normals_and_the_exact_sdf(
    primitives: Path, tmp_path: Path
):
    data = folder(primitives, tmp_path)
    batch = next(iter(data.val_dataloader()))
    size = len(data.files["val"])
    assert batch["surface"].shape == (size, 32, 6) and batch["points"].shape == (size, 64, 3)
    assert batch["sdf"].shape == (size, 64) and batch["label"].dtype == torch.int64
    assert torch.equal(batch["points"], next(iter(data.val_dataloader()))["points"])
    torch.testing.assert_close(batch["surface"][..., 3:].norm(dim=-1), torch.ones(size, 32))
    near = batch["sdf"][:, :32].abs()
    assert near.max() < 0.3 and batch["points"].abs().max() <= 1


def test_augmented_sdf_equals_the_closed_form_of_the_moved_shape(tmp_path: Path):
    """A box of known sides: each augmented example's SDF must be that of the box moved by one
    of the eight quarter turns and mirrors and scaled by some s in [0.6, 1]:
    sdf(p) = s box(Q^T p / s), searched over Q and a grid of s."""
    box = Primitive("box", extents=(1.8, 0.6, 1.2))
    (tmp_path / "one").mkdir()
    box.mesh().export(tmp_path / "one" / "box.obj")
    augmentation = Augmentation(quarter_turns=True, mirror=True, scale=(0.6, 1.0))
    data = folder(tmp_path / "one", tmp_path / "cache", augmentation=augmentation)
    data.val_fraction = data.test_fraction = 0.0
    data.setup()
    torch.manual_seed(0)
    seen_scales = set()
    for _ in range(12):
        example = data.datasets["train"][0]
        points, sdf = example["points"], example["sdf"]
        candidates = []
        for quarter in range(4):
            for mirror in (1.0, -1.0):
                angle = math.pi / 2 * quarter
                cos, sin = round(math.cos(angle)), round(math.sin(angle))
                rotation = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]])
                candidates.append(rotation @ torch.diag(torch.tensor([mirror, 1.0, 1.0])))
        errors = []
        for matrix in candidates:
            for scale in torch.linspace(0.6, 1.0, 401):
                exact = scale * box.sdf((points @ matrix) / scale)
                errors.append(((exact - sdf).abs().max().item(), round(float(scale), 3)))
        error, scale = min(errors)
        assert error < 2e-3
        seen_scales.add(scale)
    assert len(seen_scales) > 3


def test_a_bad_file_stops_the_set_up_or_is_skipped_by_name(
    primitives: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    root = tmp_path / "mixed"
    (root / "good").mkdir(parents=True)
    for name in ("000.obj", "001.obj"):
        (root / "good" / name).write_bytes((primitives / "sphere" / name).read_bytes())
    (root / "good" / "broken.obj").write_text("v 0 0 0\n")
    with pytest.raises(MeshError, match=r"1 files are not closed meshes .*\n.*broken\.obj: no"):
        folder(root, tmp_path / "cache", val_fraction=0.0, test_fraction=0.0).setup()
    data = folder(root, tmp_path / "cache", val_fraction=0.0, test_fraction=0.0, skip_invalid=True)
    with caplog.at_level(logging.WARNING):
        data.setup()
    assert len(data.files["train"]) == 2 and "broken.obj" in caplog.text
    assert data.skipped and "broken.obj" in data.skipped[0]


def test_missing_folders_and_oversized_requests_are_refused(primitives: Path, tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="nowhere: no such mesh folder"):
        find_mesh_files(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty: no mesh files"):
        find_mesh_files(tmp_path / "empty")
    with pytest.raises(ValueError, match="asked for 1024 points"):
        folder(primitives, tmp_path, num_points=1024).setup()
    with pytest.raises(ValueError, match="scale"):
        Augmentation(scale=(1.0, 0.5))
