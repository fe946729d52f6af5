"""Data sets for the compression experiments: Fashion-MNIST, MNIST and scikit-learn digits.

The Deep Compression experiments on LeNet-300-100 and LeNet-5 (Han et al.) use
28x28 grey-scale digits.  This module loads Fashion-MNIST (a drop-in replacement of
MNIST with the same format, Xiao et al.) from a local directory, MNIST from a
user-supplied directory, and falls back to scikit-learn's bundled 8x8 ``digits``
(upsampled to 28x28) when no file is available.  Nothing is ever downloaded.

Everything is held in memory as tensors and served by :class:`TensorLoader`, which
slices whole batches instead of indexing item by item.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from efficientdl.data.idx import read_idx
from efficientdl.errors import DataError

#: Where Debian's ``fashion-mnist`` package installs the data.
DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
#: Environment variable naming a data directory (or a parent of ``fashion-mnist/`` and ``mnist/``).
DATA_DIR_ENV = "EDL_DATA_DIR"

#: The four IDX files of the MNIST family, without the optional ``.gz`` suffix.
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
DIGIT_CLASSES = [str(digit) for digit in range(10)]

KNOWN_DATASETS = ("fashion-mnist", "mnist", "digits")

#: Size of the fixed test split of scikit-learn digits (about 20 % of 1797).
DIGITS_TEST_SIZE = 360
#: Seed of the fixed digits train/test split (independent of the training seed).
DIGITS_SPLIT_SEED = 0
IMAGE_SIZE = 28


class TensorLoader:
    """In-memory batch iterator over ``(x, y)`` tensors.

    A drop-in for ``torch.utils.data.DataLoader`` on data that fits in memory: each
    batch is one tensor index (or slice) instead of ``batch_size`` calls to
    ``Dataset.__getitem__`` plus collation, which is one to two orders of magnitude
    faster for MNIST-sized data.

    Shuffling draws a permutation from a ``torch.Generator`` seeded from
    ``(seed, epoch)``, so the order of epoch ``e`` is reproducible and independent of
    how many epochs were run before.  The epoch counter advances after each full
    pass; :meth:`set_epoch` sets it explicitly (the trainer does so).

    Args:
        x: inputs, first dimension indexes samples.
        y: targets, same first dimension as ``x``.
        batch_size: samples per batch (the last batch may be smaller).
        shuffle: draw a fresh permutation each epoch.
        seed: base seed of the shuffling.
        drop_last: drop the last incomplete batch.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int = 128,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        if len(x) != len(y):
            raise DataError(f"TensorLoader: x has {len(x)} samples but y has {len(y)} (expected equal)")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise DataError(f"TensorLoader: batch_size is {batch_size!r} (expected a positive integer)")
        self.x = x
        self.y = y
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.epoch = 0

    @property
    def dataset_size(self) -> int:
        """Number of samples served per epoch before ``drop_last`` (``len(x)``)."""
        return len(self.x)

    def __len__(self) -> int:
        """Number of batches per epoch."""
        if self.drop_last:
            return self.dataset_size // self.batch_size
        return math.ceil(self.dataset_size / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose permutation the next pass uses."""
        self.epoch = int(epoch)

    def permutation(self, epoch: int) -> torch.Tensor:
        """The sample order of ``epoch`` when shuffling (a permutation of ``range(dataset_size)``)."""
        seed = int(np.random.SeedSequence([self.seed & 0xFFFFFFFF, int(epoch) & 0xFFFFFFFF]).generate_state(1)[0])
        generator = torch.Generator().manual_seed(seed)
        return torch.randperm(self.dataset_size, generator=generator)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.permutation(self.epoch) if self.shuffle else None
        self.epoch += 1
        count = len(self) * self.batch_size if self.drop_last else self.dataset_size
        for start in range(0, count, self.batch_size):
            stop = min(start + self.batch_size, count)
            if order is None:
                yield self.x[start:stop], self.y[start:stop]
            else:
                index = order[start:stop]
                yield self.x[index], self.y[index]


@dataclass
class Dataset:
    """A loaded data set.

    Attributes:
        name: the data set actually loaded (``"digits"`` after a fallback).
        train: training batches (shuffled).
        test: test batches (in file order).
        num_classes: number of classes.
        input_shape: ``(C, H, W)`` of one input.
        source: one human-readable line saying where the data came from (after a
            fallback it says so; the caller prints it).
        classes: class names, index = label.
        mean: training-set mean subtracted from the [0, 1] pixels (your own data: one
            value per channel, a tuple, when there are several).
        std: training-set standard deviation the pixels were divided by (likewise).
    """

    name: str
    train: TensorLoader
    test: TensorLoader
    num_classes: int
    input_shape: tuple[int, int, int]
    source: str
    classes: list[str] = field(default_factory=list)
    mean: float | tuple[float, ...] = 0.0
    std: float | tuple[float, ...] = 1.0


def _idx_file(directory: Path, stem: str) -> Path | None:
    """The raw or ``.gz`` file for ``stem`` in ``directory``, raw preferred; ``None`` if absent."""
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _holds_idx_files(directory: Path) -> bool:
    return directory.is_dir() and all(_idx_file(directory, stem) for stem in IDX_FILES.values())


def _expected_names() -> str:
    return ", ".join(f"{stem}[.gz]" for stem in IDX_FILES.values())


def _check_explicit_dir(data_dir: str | os.PathLike) -> Path:
    directory = Path(data_dir)
    if not directory.is_dir():
        raise DataError(f"data directory {directory} does not exist (expected a directory holding {_expected_names()})")
    missing = [stem for stem in IDX_FILES.values() if _idx_file(directory, stem) is None]
    if missing:
        names = ", ".join(f"{stem}[.gz]" for stem in missing)
        raise DataError(f"data directory {directory} lacks {names} (expected {_expected_names()})")
    return directory


def _env_candidates(subdir: str) -> list[Path]:
    value = os.environ.get(DATA_DIR_ENV)
    if not value:
        return []
    root = Path(value)
    return [root / subdir, root]


def _search(subdir: str, data_dir: str | os.PathLike | None, defaults: list[Path]) -> tuple[Path | None, list[Path]]:
    """Find a directory with the four IDX files; return it (or ``None``) and the places tried."""
    if data_dir is not None:
        return _check_explicit_dir(data_dir), [Path(data_dir)]
    tried = _env_candidates(subdir) + defaults
    for candidate in tried:
        if _holds_idx_files(candidate):
            return candidate, tried
    return None, tried


def find_fashion_mnist(data_dir: str | os.PathLike | None = None) -> Path | None:
    """Locate the Fashion-MNIST IDX files on disk (never downloads).

    Search order: ``data_dir`` if given (it must then hold the four files
    ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each raw or ``.gz``);
    otherwise ``$EDL_DATA_DIR/fashion-mnist``, then ``$EDL_DATA_DIR`` itself, then
    :data:`DEFAULT_FASHION_MNIST_DIR` (Debian's ``fashion-mnist`` package).

    Args:
        data_dir: explicit directory, or ``None`` to search.

    Returns:
        The directory holding the four files, or ``None`` when the search finds none.

    Raises:
        DataError: ``data_dir`` was given but is missing or lacks a file.
    """
    found, _ = _search("fashion-mnist", data_dir, [Path(DEFAULT_FASHION_MNIST_DIR)])
    return found


def _first_of_permutation(count: int, subset: int | None, seed: int, what: str) -> np.ndarray | None:
    """Indices of the first ``subset`` entries of a seeded permutation (``None``: keep all)."""
    if subset is None:
        return None
    if isinstance(subset, bool) or not isinstance(subset, int) or subset < 1:
        raise DataError(f"{what} is {subset!r} (expected a positive integer or None)")
    if subset >= count:
        return None
    return np.random.default_rng(seed).permutation(count)[:subset]


def _mean_std(images: np.ndarray, scale: float) -> tuple[float, float]:
    """Mean and population standard deviation of ``images / scale`` (exact, low memory for uint8)."""
    if images.dtype == np.uint8:
        counts = np.bincount(images.ravel(), minlength=256).astype(np.float64)
        values = np.arange(256, dtype=np.float64) / scale
        total = counts.sum()
        mean = float((counts * values).sum() / total)
        return mean, float(math.sqrt((counts * (values - mean) ** 2).sum() / total))
    data = images.astype(np.float64) / scale
    return float(data.mean()), float(data.std())


def _normalize(images: np.ndarray, scale: float, mean: float, std: float) -> torch.Tensor:
    """``(images / scale - mean) / std`` as float32 N x 1 x H x W, computed in place."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32)
    x.div_(scale).sub_(mean).div_(std)
    return x.unsqueeze(1) if x.dim() == 3 else x


def _make_dataset(
    name: str,
    train_images01: np.ndarray,
    train_labels: np.ndarray,
    test_images01: np.ndarray,
    test_labels: np.ndarray,
    classes: list[str],
    source: str,
    batch_size: int,
    test_batch_size: int,
    train_subset: int | None,
    test_subset: int | None,
    seed: int,
) -> Dataset:
    """Normalize with the full training set's mean/std, take subsets, wrap in loaders.

    ``*_images01`` are float arrays in [0, 1] or uint8 arrays (divided by 255 here).
    """
    scale = 255.0 if train_images01.dtype == np.uint8 else 1.0
    mean, std = _mean_std(train_images01, scale)
    if not std > 0:
        raise DataError(f"{name}: the training images are constant (standard deviation 0); cannot normalize")
    train_index = _first_of_permutation(len(train_labels), train_subset, seed, "train_subset")
    test_index = _first_of_permutation(len(test_labels), test_subset, seed + 1, "test_subset")
    if train_index is not None:
        train_images01, train_labels = train_images01[train_index], train_labels[train_index]
    if test_index is not None:
        test_images01, test_labels = test_images01[test_index], test_labels[test_index]
    x_train = _normalize(train_images01, scale, mean, std)
    x_test = _normalize(test_images01, scale, mean, std)
    y_train = torch.from_numpy(np.asarray(train_labels, dtype=np.int64))
    y_test = torch.from_numpy(np.asarray(test_labels, dtype=np.int64))
    return Dataset(
        name=name,
        train=TensorLoader(x_train, y_train, batch_size=batch_size, shuffle=True, seed=seed),
        test=TensorLoader(x_test, y_test, batch_size=test_batch_size, shuffle=False),
        num_classes=len(classes),
        input_shape=tuple(x_train.shape[1:]),
        source=source,
        classes=list(classes),
        mean=mean,
        std=std,
    )


def _read_idx_pair(directory: Path, split: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Read and cross-check one split's images (N x H x W ubyte) and labels (N ubyte)."""
    images_path = _idx_file(directory, IDX_FILES[f"{split}_images"])
    labels_path = _idx_file(directory, IDX_FILES[f"{split}_labels"])
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{images_path}: holds {images.dtype} of shape {images.shape} (expected ubyte N x H x W)")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: holds shape {labels.shape} (expected one label per image, N)")
    if len(images) != len(labels):
        raise DataError(f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path.name} (expected equal)")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{labels_path}: labels range {labels.min()}..{labels.max()} (expected 0..{num_classes - 1})")
    return images, labels


def _load_idx_dataset(name: str, directory: Path, classes: list[str], **options) -> Dataset:
    train_images, train_labels = _read_idx_pair(directory, "train", len(classes))
    test_images, test_labels = _read_idx_pair(directory, "test", len(classes))
    if train_images.shape[1:] != test_images.shape[1:]:
        raise DataError(
            f"{directory}: train images are {train_images.shape[1:]} but test images are {test_images.shape[1:]} (expected equal)"
        )
    if len(train_labels) == 0 or len(test_labels) == 0:
        raise DataError(f"{directory}: empty train or test split (expected at least one image each)")
    source = f"{name} from {directory} ({len(train_labels)} train / {len(test_labels)} test images)"
    return _make_dataset(name, train_images, train_labels, test_images, test_labels, classes, source, **options)


def _upsample_bilinear(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of N x H x W images to N x size x size (half-pixel centres)."""
    x = torch.from_numpy(images.astype(np.float32)).unsqueeze(1)
    y = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return y.squeeze(1).numpy()


def _digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn digits in [0, 1], upsampled to 28x28, split 1437 / 360 stratified by class."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images01 = digits.images.astype(np.float32) / 16.0  # pixel values are 0..16
    labels = digits.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=DIGITS_TEST_SIZE, stratify=labels, random_state=DIGITS_SPLIT_SEED
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    upsampled = _upsample_bilinear(images01, IMAGE_SIZE)
    return upsampled[train_idx], labels[train_idx], upsampled[test_idx], labels[test_idx]


def _load_digits(note: str, **options) -> Dataset:
    train_x, train_y, test_x, test_y = _digits_split()
    source = (
        f"{note}scikit-learn digits ({len(train_y)} train / {len(test_y)} test images, "
        f"8x8 upsampled to {IMAGE_SIZE}x{IMAGE_SIZE})"
    )
    return _make_dataset("digits", train_x, train_y, test_x, test_y, DIGIT_CLASSES, source, **options)


def load(
    name: str = "fashion-mnist",
    data_dir: str | os.PathLike | None = None,
    batch_size: int = 128,
    test_batch_size: int = 1000,
    train_subset: int | None = None,
    test_subset: int | None = None,
    seed: int = 0,
    fallback: bool = True,
    image_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    mean: float | tuple[float, ...] | None = None,
    std: float | tuple[float, ...] | None = None,
) -> Dataset:
    """Load a data set into memory as normalized N x 1 x 28 x 28 float32 tensors (your own
    data: see :mod:`efficientdl.data.user`).

    Pixels are scaled to [0, 1], then normalized as ``(x - mean) / std`` with the
    mean and (population) standard deviation of the whole training split.

    Names:
        ``"fashion-mnist"``: 60,000 / 10,000 images, found by
        :func:`find_fashion_mnist`.  When absent and ``fallback`` is true, the digits
        set is returned and ``source`` says so (the caller prints it).
        ``"mnist"``: the same format, only from ``data_dir`` or ``$EDL_DATA_DIR``
        (``$EDL_DATA_DIR/mnist`` first).
        ``"digits"``: scikit-learn's bundled 1,797 8x8 digits, bilinearly upsampled
        to 28x28 so the same models apply, split 1,437 / 360 stratified by class with
        a fixed seed.
        Anything else is your own data (:func:`efficientdl.data.user.load_user_data`): a
        directory of images in class sub-folders, a ``.npz`` with ``x`` and ``y``, or
        ``MODULE:CALLABLE`` returning ``(train, test)`` batches.

    Args:
        name: which data set.
        data_dir: directory holding the four IDX files (``fashion-mnist``/``mnist``).
        batch_size: training batch size.
        test_batch_size: test batch size.
        train_subset: keep only the first N of a permutation seeded by ``seed``.
        test_subset: the same for the test split (permutation seeded by ``seed + 1``).
        seed: seeds the subsets and the training shuffle.
        fallback: allow the digits fallback for a missing Fashion-MNIST.
        image_size: your images resized to ``S`` or ``(H, W)``.
        channels: your images as 1 (grey-scale) or 3 (RGB) channels.
        mean: per-channel mean subtracted from your data (default: the training split's).
        std: per-channel standard deviation it is divided by (default: the training split's).

    Returns:
        The :class:`Dataset`.

    Raises:
        DataError: unknown name, missing or malformed data, bad subset size, or an image
            option given for a built-in data set.
    """
    options = dict(
        batch_size=batch_size, test_batch_size=test_batch_size,
        train_subset=train_subset, test_subset=test_subset, seed=seed,
    )
    user_options = dict(image_size=image_size, channels=channels, mean=mean, std=std)
    if name not in KNOWN_DATASETS:
        from efficientdl.data.user import USER_FORMS, is_user_data, load_user_data

        if is_user_data(name) or os.sep in str(name):
            return load_user_data(name, **options, **user_options)
        raise DataError(f"unknown data set {name!r} (expected {', '.join(KNOWN_DATASETS)}, or {USER_FORMS})")
    given = [k for k, v in user_options.items() if v is not None]
    if given:
        raise DataError(f"{given[0]} applies to your own data (an image folder, a .npz, MODULE:CALLABLE), "
                        f"not to {name}")
    if name == "digits":
        return _load_digits("", **options)
    if name == "fashion-mnist":
        directory, tried = _search("fashion-mnist", data_dir, [Path(DEFAULT_FASHION_MNIST_DIR)])
        if directory is not None:
            return _load_idx_dataset("fashion-mnist", directory, FASHION_MNIST_CLASSES, **options)
        places = ", ".join(str(path) for path in tried)
        if not fallback:
            raise DataError(
                f"Fashion-MNIST not found at {places} (expected {_expected_names()}; pass data_dir or set {DATA_DIR_ENV})"
            )
        return _load_digits(f"Fashion-MNIST not found at {places}; using ", **options)
    if name == "mnist":
        directory, tried = _search("mnist", data_dir, [])
        if directory is None:
            where = ", ".join(str(path) for path in tried) or f"nowhere ({DATA_DIR_ENV} is not set)"
            raise DataError(
                f"MNIST not found at {where} (pass data_dir or set {DATA_DIR_ENV} to a directory holding {_expected_names()})"
            )
        return _load_idx_dataset("mnist", directory, DIGIT_CLASSES, **options)
    raise DataError(f"unknown data set {name!r} (expected one of {', '.join(KNOWN_DATASETS)})")
