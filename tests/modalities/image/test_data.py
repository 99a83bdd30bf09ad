"""Image datamodules: shapes, ranges, seeded splits, the cache manifest and clear errors."""

from __future__ import annotations

import gzip
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modalities.image import FashionMNIST, ImageFolder, MNIST5k, SklearnDigits, read_idx

from .conftest import FASHION_ROOT


def _check_batch(batch: dict, channels: int, size: int) -> None:
    images, labels = batch["image"], batch["label"]
    assert images.dtype == torch.float32 and labels.dtype == torch.long
    assert images.shape[1:] == (channels, size, size) and labels.shape == images.shape[:1]
    assert images.min() >= 0 and images.max() <= 1


def _split_images(datamodule) -> list[bytes]:
    """Every image of the train, val and test splits, as sorted raw bytes (a multiset)."""
    arrays = [datamodule.datasets[split].images.numpy() for split in ("train", "val", "test")]
    return sorted(image.tobytes() for array in arrays for image in array)


def test_mnist5k_batches_and_split_sizes(mnist: MNIST5k):
    _check_batch(next(iter(mnist.train_dataloader())), 1, 28)
    batch = next(iter(mnist.train_dataloader()))
    torch.testing.assert_close(batch["image"], (batch["image"] * 255).round() / 255, atol=0, rtol=0)
    items = mnist.datasets["val"][[0, 3]]  # items are the stored uint8 pixels / 255
    assert torch.equal(items["image"], mnist.datasets["val"].images[[0, 3]].float() / 255)
    assert torch.equal(items["label"], mnist.datasets["val"].labels[[0, 3]])
    assert mnist.manifest()["counts"] == {"train": 4000, "val": 500, "test": 500}
    assert mnist.image_shape == (1, 28, 28) and mnist.num_classes == 10
    assert torch.bincount(mnist.datasets["train"].labels, minlength=10).min() > 300
    assert mnist.datasets["train"].images.max() == 255


def test_splits_are_fixed_by_the_seed(mnist: MNIST5k, cache_dir: str):
    same = MNIST5k(cache_dir=cache_dir, seed=0)
    same.setup()
    other = MNIST5k(cache_dir=cache_dir, seed=1)
    other.setup()
    assert torch.equal(same.datasets["val"].images, mnist.datasets["val"].images)
    assert not torch.equal(other.datasets["val"].labels, mnist.datasets["val"].labels)
    assert other.cache_dir != mnist.cache_dir


def test_limit_caps_only_the_training_split(cache_dir: str):
    limited = MNIST5k(cache_dir=cache_dir, limit=100, batch_size=32)
    limited.setup()
    assert len(limited.datasets["train"]) == 100 and len(limited.datasets["val"]) == 500
    # full batches only: three of 32, the 4 left over are another random 4 each epoch
    assert [len(batch["label"]) for batch in limited.train_dataloader()] == [32, 32, 32]


def test_manifest_is_written_and_reused(mnist: MNIST5k, monkeypatch: pytest.MonkeyPatch):
    manifest = json.loads(mnist.manifest_path.read_text())
    source = mnist.source_files()[0]
    assert manifest["sources"] == {str(source): manifest["sources"][str(source)]}
    assert len(manifest["sources"][str(source)]) == 64
    assert manifest["split"]["seed"] == 0 and manifest["dataset"] == "mnist5k"

    def fail(*_):
        raise AssertionError("the cache was rebuilt although the source did not change")

    monkeypatch.setattr(MNIST5k, "_build_cache", fail)
    MNIST5k(cache_dir=str(mnist.cache_root)).prepare_data()


def test_sklearn_digits_scaled_and_padded(cache_dir: str):
    digits = SklearnDigits(cache_dir=cache_dir, batch_size=2000)
    digits.setup()
    counts = digits.manifest()["counts"]
    assert sum(counts.values()) == 1797 and counts["val"] == 180
    batch = next(iter(digits.val_dataloader()))
    _check_batch(batch, 1, 8)
    assert batch["image"].max() == 1.0
    # The splits partition scikit-learn's digits, pixel values 0..16 mapped by / 16.
    from sklearn.datasets import load_digits

    reference = load_digits()
    expected = sorted(image.astype(np.uint8).tobytes() for image in reference.images[:, None])
    assert _split_images(digits) == expected
    assert torch.equal((batch["image"] * 16).round(), batch["image"] * 16)
    labels = torch.cat([digits.datasets[s].labels for s in ("train", "val", "test")])
    assert torch.equal(torch.bincount(labels), torch.bincount(torch.from_numpy(reference.target)))
    padded = SklearnDigits(cache_dir=cache_dir, pad_to=16)
    padded.setup()
    assert padded.image_shape == (1, 16, 16)
    assert torch.equal(
        padded.datasets["val"].images[:, :, 4:12, 4:12], digits.datasets["val"].images
    )
    assert padded.datasets["val"].images[:, :, :4].sum() == 0


def test_fashion_mnist_official_test_split(cache_dir: str):
    fashion = FashionMNIST(root=FASHION_ROOT, cache_dir=cache_dir, val_fraction=0.1)
    fashion.setup()
    assert fashion.manifest()["counts"] == {"train": 54000, "val": 6000, "test": 10000}
    _check_batch(next(iter(fashion.test_dataloader())), 1, 28)
    assert fashion.manifest()["class_names"][9] == "Ankle boot"


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    data = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def _tiny_idx_folder(root: Path, gz: bool) -> Path:
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    root.mkdir()
    for part, count in (("train", 30), ("t10k", 10)):
        _write_idx(
            root / f"{part}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (count, 28, 28))
        )
        _write_idx(root / f"{part}-labels-idx1-ubyte{suffix}", rng.integers(0, 10, count))
    return root


@pytest.mark.parametrize("gz", [True, False])
def test_any_idx_folder_is_read(tmp_path: Path, gz: bool):
    root = _tiny_idx_folder(tmp_path / "idx", gz)
    datamodule = FashionMNIST(root=str(root), cache_dir=str(tmp_path / "cache"), val_fraction=0.2)
    datamodule.setup()
    assert datamodule.manifest()["counts"] == {"train": 24, "val": 6, "test": 10}
    suffix = ".gz" if gz else ""
    raw = read_idx(root / f"t10k-images-idx3-ubyte{suffix}", 3)
    assert torch.equal(datamodule.datasets["test"].images[:, 0], torch.from_numpy(raw.copy()))


def test_corrupt_idx_file_names_the_file(tmp_path: Path):
    root = _tiny_idx_folder(tmp_path / "idx", gz=True)
    broken = root / "train-images-idx3-ubyte.gz"
    broken.write_bytes(gzip.compress(gzip.decompress(broken.read_bytes())[:-100]))
    datamodule = FashionMNIST(root=str(root), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(
        ValueError, match=r"train-images-idx3-ubyte\.gz.*truncated or corrupt.*apt-get install"
    ):
        datamodule.prepare_data()

    broken.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz: cannot read"):
        datamodule.prepare_data()

    labels = root / "t10k-labels-idx1-ubyte.gz"
    _write_idx(root / "train-images-idx3-ubyte.gz", np.zeros((30, 28, 28)))
    labels.write_bytes(gzip.compress(bytes([0, 0, 8, 3]) + bytes(8)))
    with pytest.raises(
        ValueError, match=r"t10k-labels-idx1-ubyte\.gz: not an unsigned-byte IDX file"
    ):
        datamodule.prepare_data()


def test_missing_idx_file_says_how_to_get_it(tmp_path: Path):
    root = _tiny_idx_folder(tmp_path / "idx", gz=True)
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(
        FileNotFoundError, match=r"t10k-labels-idx1-ubyte.*apt-get install dataset-fashion-mnist"
    ):
        FashionMNIST(root=str(root), cache_dir=str(tmp_path / "cache")).prepare_data()


def _tiny_image_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for name, colour, suffix in (("cats", 0, ".png"), ("dogs", 2, ".jpg")):
        (root / name).mkdir(parents=True)
        for index in range(6):
            pixels = rng.integers(0, 60, (20 + index, 30, 3), dtype=np.uint8)
            pixels[..., colour] = 250
            Image.fromarray(pixels).save(root / name / f"{index}{suffix}")
    (root / "cats" / "notes.txt").write_text("not an image")
    return root


def test_image_folder_rgb_and_grayscale(tmp_path: Path):
    root = _tiny_image_folder(tmp_path / "folder")
    rgb = ImageFolder(
        str(root),
        image_size=16,
        cache_dir=str(tmp_path / "cache"),
        val_fraction=0.25,
        test_fraction=0.25,
    )
    rgb.setup()
    assert rgb.manifest()["counts"] == {"train": 6, "val": 3, "test": 3}
    assert rgb.manifest()["class_names"] == ["cats", "dogs"]
    batch = next(iter(rgb.train_dataloader()))
    _check_batch(batch, 3, 16)
    red_is_cat = batch["image"][:, 0].mean((1, 2)) > batch["image"][:, 2].mean((1, 2))
    assert torch.equal(red_is_cat, batch["label"] == 0)
    gray = ImageFolder(str(root), image_size=12, grayscale=True, cache_dir=str(tmp_path / "cache"))
    gray.setup()
    _check_batch(next(iter(gray.val_dataloader())), 1, 12)
    # Every image is its file, centre-cropped to a square and resized bilinearly (PIL).
    for datamodule, size, mode in ((rgb, 16, "RGB"), (gray, 12, "L")):
        expected = []
        for path in sorted(root.glob("*/*.*")):
            if path.suffix == ".txt":
                continue
            with Image.open(path) as image:
                image = image.convert(mode)
            side = min(image.size)
            left, top = (image.width - side) // 2, (image.height - side) // 2
            image = image.crop((left, top, left + side, top + side))
            pixels = np.asarray(image.resize((size, size), Image.BILINEAR), dtype=np.uint8)
            expected.append(pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1))
        assert _split_images(datamodule) == sorted(array.tobytes() for array in expected)


def test_changed_source_rebuilds_the_cache_with_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    root = _tiny_image_folder(tmp_path / "folder")
    datamodule = ImageFolder(str(root), image_size=8, cache_dir=str(tmp_path / "cache"))
    datamodule.prepare_data()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(root / "cats" / "0.png")
    with caplog.at_level(logging.WARNING, logger="modalities.image.data"):
        datamodule.prepare_data()
    assert "differ from the cache manifest" in caplog.text and "rebuilding" in caplog.text
    assert datamodule.manifest()["sources"] == datamodule.source_fingerprints()


def test_image_folder_layout_errors(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"missing.*one subfolder per class"):
        ImageFolder(str(tmp_path / "missing"))
    (tmp_path / "flat").mkdir()
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(ValueError, match=r"flat has no class subfolders"):
        ImageFolder(str(tmp_path / "flat"))
    root = _tiny_image_folder(tmp_path / "folder")
    (root / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty holds no \.png/\.jpg images"):
        ImageFolder(str(root))
    shutil.rmtree(root / "empty")
    (root / "dogs" / "broken.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"broken\.png: not a readable image"):
        ImageFolder(str(root), cache_dir=str(tmp_path / "cache")).prepare_data()


def test_bad_split_fractions_are_rejected():
    with pytest.raises(ValueError, match="val_fraction"):
        MNIST5k(val_fraction=0.6, test_fraction=0.5)
