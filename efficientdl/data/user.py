"""Your own data: a folder of images, a ``.npz`` of arrays, or a callable of your code.

:func:`efficientdl.data.load` hands every name that is not a built-in data set to
:func:`load_user_data`, which recognises three forms:

* **an image folder** — ``DIR/CLASS/*.png`` (or ``.jpg``, ``.jpeg``, ``.bmp``, ``.gif``,
  ``.webp``, ``.tif``; the layout of torchvision's ``ImageFolder``; class = sub-folder,
  labels in sorted order).  ``DIR/train/CLASS/…`` with ``DIR/test/CLASS/…`` (or ``val``)
  gives the split; otherwise a fixed, seeded, per-class 80/20 split.  Pillow reads the
  files (``pip install 'efficientdl[images]'``); every image is converted to ``channels``
  (default: 1 when all are grey-scale, else 3) and resized bilinearly to ``image_size``
  (default: the first image's size).
* **a .npz** with arrays ``x`` (``N×D`` features, ``N×H×W`` or ``N×C×H×W`` images; uint8
  is divided by 255) and ``y`` (integer labels), optionally ``x_test``/``y_test`` (else the
  same fixed split) and ``classes`` (names).  Loaded with ``allow_pickle=False``.
* **MODULE:CALLABLE** — your function returning ``(train, test)``, two iterables of
  ``(x, y)`` batches (tensors or arrays); it gets ``batch_size`` and ``seed`` when it names
  them.  The batches are gathered into memory (uint8 divided by 255, ``N×H×W`` given a
  channel) and served again in ``batch_size`` batches.

Images and arrays are normalised per channel, ``(x - mean) / std``, with the given
``mean``/``std`` or else the whole training split's statistics; a callable's batches are
used as they come unless ``mean``/``std`` are given.  The split is fixed (independent of
``seed``), so a file evaluated later on the same data is tested on the same images.
Everything is held in memory, as for the built-in sets.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from efficientdl.data.datasets import Dataset, TensorLoader, _first_of_permutation
from efficientdl.errors import DataError, ModelError

#: file suffixes read as images (lower case)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
#: share of each class held out for testing when the data has no test split
TEST_FRACTION = 0.2
#: seed of that split (fixed, so that every command sees the same test images)
SPLIT_SEED = 0
#: the forms, for error messages
FOLDER_LAYOUT = "expected DIR/CLASS/*.png|jpg"
NPZ_LAYOUT = "expected a .npz with arrays x and y, optionally x_test and y_test"
USER_FORMS = "an image directory DIR/CLASS/*.png|jpg, a .npz file with x and y, or MODULE:CALLABLE"


def is_user_data(name: str) -> bool:
    """Whether ``name`` names data of the user's: an existing path, a ``.npz`` name or ``MODULE:CALLABLE``.

    Args:
        name: the ``--data`` argument.

    Returns:
        ``True`` when :func:`load_user_data` should handle it.
    """
    return isinstance(name, str) and (os.path.exists(name) or name.endswith(".npz") or ":" in name)


def load_user_data(
    spec: str,
    batch_size: int = 128,
    test_batch_size: int = 1000,
    train_subset: int | None = None,
    test_subset: int | None = None,
    seed: int = 0,
    image_size: int | Sequence[int] | None = None,
    channels: int | None = None,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
) -> Dataset:
    """Load an image folder, a ``.npz`` or a callable's batches (see the module docstring).

    Args:
        spec: a directory, a ``.npz`` path, or ``MODULE:CALLABLE``.
        batch_size: training batch size.
        test_batch_size: test batch size.
        train_subset: keep only the first N of a permutation seeded by ``seed``.
        test_subset: the same for the test split (seeded by ``seed + 1``).
        seed: seeds the subsets and the training shuffle (not the train/test split).
        image_size: resize images to ``S`` or ``(H, W)`` (bilinear).
        channels: 1 (grey-scale) or 3 (RGB).
        mean: per-channel mean to subtract (one value or one per channel).
        std: per-channel standard deviation to divide by (one value or one per channel).

    Returns:
        The :class:`~efficientdl.data.Dataset`, ``name`` = ``spec``.

    Raises:
        DataError: a missing path, a malformed folder or array file, a callable that fails or
            returns no ``(train, test)`` batches, or bad options (one line naming the path).
    """
    size = _size(image_size)
    if channels not in (None, 1, 3):
        raise DataError(f"channels is {channels!r} (expected 1 or 3)")
    options = dict(batch_size=batch_size, test_batch_size=test_batch_size, train_subset=train_subset,
                   test_subset=test_subset, seed=seed)
    path = Path(spec)
    if path.is_dir():
        parts = _read_folder(path, size, channels)
        return _dataset(spec, *parts, mean=mean, std=std, default_stats=True, **options)
    if path.exists() or spec.endswith(".npz"):
        if not path.exists():
            raise DataError(f"{spec}: no such file ({NPZ_LAYOUT})")
        if not path.is_file():
            raise DataError(f"{spec}: is not a regular file or a directory ({NPZ_LAYOUT})")
        parts = _read_npz(path, size, channels)
        return _dataset(spec, *parts, mean=mean, std=std, default_stats=True, **options)
    if ":" in spec:
        parts = _read_callable(spec, batch_size, seed, size, channels)
        return _dataset(spec, *parts, mean=mean, std=std, default_stats=False, **options)
    raise DataError(f"{spec}: no such file or directory (expected {USER_FORMS})")


# --------------------------------------------------------------------------- the three forms
def _read_folder(root: Path, size: tuple[int, int] | None, channels: int | None):
    """``(x_train, y_train, x_test, y_test, classes, source)`` of an image folder, x in [0, 1]."""
    splits = _folder_splits(root)
    if splits is None:
        classes, files = _class_files(root)
        if not classes:
            raise DataError(f"{root}: no class sub-folders with images ({FOLDER_LAYOUT})")
        train_files, test_files = _split_files(files, len(classes), root)
        split_text = f"fixed {100 - 100 * TEST_FRACTION:.0f}/{100 * TEST_FRACTION:.0f} split"
    else:
        (train_dir, test_dir) = splits
        classes, train_files = _class_files(train_dir)
        test_classes, test_raw = _class_files(test_dir)
        unknown = [c for c in test_classes if c not in classes]
        if unknown:
            raise DataError(f"{test_dir}: class {unknown[0]!r} is not among the training classes of {train_dir}")
        index = {c: i for i, c in enumerate(classes)}
        test_files = [(f, index[test_classes[label]]) for f, label in test_raw]
        split_text = f"{train_dir.name}/ and {test_dir.name}/"
    try:
        from PIL import Image
    except ImportError:
        raise DataError(f"{root}: reading images needs Pillow (pip install 'efficientdl[images]')") from None
    first = _open(Image, train_files[0][0])
    size = size or (first.height, first.width)
    if channels is None:
        grey = ("1", "L", "LA", "I", "I;16", "F")
        channels = 1 if all(_open(Image, f).mode in grey for f, _ in train_files + test_files) else 3
    x_train, y_train = _read_images(Image, train_files, size, channels)
    x_test, y_test = _read_images(Image, test_files, size, channels)
    source = (f"image folder: {len(classes)} classes, {len(y_train)} train / {len(y_test)} test images, "
              f"{channels}×{size[0]}×{size[1]}, {split_text}")
    return x_train, y_train, x_test, y_test, classes, source


def _folder_splits(root: Path) -> tuple[Path, Path] | None:
    """``(DIR/train, DIR/test or DIR/val)`` when both hold class sub-folders with images."""
    train = root / "train"
    for name in ("test", "val"):
        test = root / name
        if train.is_dir() and test.is_dir() and _class_files(train)[0] and _class_files(test)[0]:
            return train, test
    return None


def _class_files(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """The sorted sub-folders holding images (anywhere below them), and ``(file, label)`` pairs."""
    try:
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as e:
        raise DataError(f"{root}: cannot read ({e.strerror or e})") from None
    classes, files = [], []
    for folder in folders:
        images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if images:
            files += [(p, len(classes)) for p in images]
            classes.append(folder.name)
    return classes, files


def _split_files(files: list[tuple[Path, int]], num_classes: int, root: Path):
    """A per-class split: ``TEST_FRACTION`` of each class's files (at least one of a class of two
    or more) for testing, drawn with :data:`SPLIT_SEED`."""
    labels = np.array([label for _, label in files])
    test_index = _split_index(labels, num_classes)
    if not len(test_index) or len(test_index) == len(files):
        raise DataError(f"{root}: {len(files)} image(s) are too few to split into train and test "
                        f"(expected at least two in a class, or DIR/train and DIR/test)")
    chosen = set(test_index.tolist())
    return ([f for i, f in enumerate(files) if i not in chosen], [f for i, f in enumerate(files) if i in chosen])


def _split_index(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Sorted indices of the test samples of the fixed per-class split."""
    rng = np.random.default_rng(SPLIT_SEED)
    test = []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        if len(members) >= 2:
            take = max(1, int(round(TEST_FRACTION * len(members))))
            test.append(rng.permutation(members)[:take])
    return np.sort(np.concatenate(test)) if test else np.array([], dtype=np.int64)


def _open(Image, path: Path):
    try:
        return Image.open(path)
    except Exception as e:      # Pillow raises several types for files it cannot read
        raise DataError(f"{path}: not a readable image ({type(e).__name__}: {' '.join(str(e).split())[:120]})") from None


def _read_images(Image, files: list[tuple[Path, int]], size: tuple[int, int], channels: int):
    """uint8 ``N×C×H×W`` and int64 labels of ``files``, converted and resized."""
    x = np.empty((len(files), channels, size[0], size[1]), dtype=np.uint8)
    for i, (path, _) in enumerate(files):
        try:
            with _open(Image, path) as img:
                img = img.convert("L" if channels == 1 else "RGB")
                if (img.height, img.width) != size:
                    img = img.resize((size[1], size[0]), Image.BILINEAR)
                a = np.asarray(img, dtype=np.uint8)
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"{path}: not a readable image ({type(e).__name__}: {' '.join(str(e).split())[:120]})") from None
        x[i] = a[None] if channels == 1 else a.transpose(2, 0, 1)
    return x, np.array([label for _, label in files], dtype=np.int64)


def _read_npz(path: Path, size: tuple[int, int] | None, channels: int | None):
    """``(x_train, y_train, x_test, y_test, classes, source)`` of a ``.npz``."""
    import zipfile

    if not zipfile.is_zipfile(path):    # np.load would try it as a pickle
        raise DataError(f"{path}: not a readable .npz (not a zip archive; {NPZ_LAYOUT})")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as e:      # object arrays (pickles are refused), damaged members
        raise DataError(f"{path}: not a readable .npz ({type(e).__name__}: {' '.join(str(e).split())[:80]}; "
                        f"{NPZ_LAYOUT})") from None
    for key in ("x", "y"):
        if key not in arrays:
            raise DataError(f"{path}: no array {key!r} ({NPZ_LAYOUT}; found {', '.join(arrays) or 'none'})")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise DataError(f"{path}: x_test and y_test go together ({NPZ_LAYOUT})")
    x, y = _images(arrays["x"], f"{path}: x"), _labels(arrays["y"], f"{path}: y")
    if len(x) != len(y):
        raise DataError(f"{path}: x has {len(x)} samples but y has {len(y)} (expected equal)")
    if "x_test" in arrays:
        x_test, y_test = _images(arrays["x_test"], f"{path}: x_test"), _labels(arrays["y_test"], f"{path}: y_test")
        if len(x_test) != len(y_test):
            raise DataError(f"{path}: x_test has {len(x_test)} samples but y_test has {len(y_test)} (expected equal)")
        if x_test.shape[1:] != x.shape[1:]:
            raise DataError(f"{path}: x_test samples are {tuple(x_test.shape[1:])} but x samples are "
                            f"{tuple(x.shape[1:])} (expected equal)")
        split_text = "x_test/y_test"
    else:
        test_index = _split_index(y, int(y.max()) + 1 if len(y) else 0)
        if not len(test_index) or len(test_index) == len(y):
            raise DataError(f"{path}: {len(y)} samples are too few to split into train and test "
                            "(expected at least two in a class, or x_test and y_test)")
        keep = np.ones(len(y), dtype=bool)
        keep[test_index] = False
        x, y, x_test, y_test = x[keep], y[keep], x[test_index], y[test_index]
        split_text = f"fixed {100 - 100 * TEST_FRACTION:.0f}/{100 * TEST_FRACTION:.0f} split"
    num_classes = int(max(y.max(initial=-1), y_test.max(initial=-1))) + 1
    classes = [str(c) for c in range(num_classes)]
    if "classes" in arrays:
        names = arrays["classes"]
        if names.ndim != 1 or len(names) < num_classes:
            raise DataError(f"{path}: 'classes' must list a name for each of the {num_classes} labels")
        classes = [str(c) for c in names.tolist()]
    x, x_test = _convert(x, size, channels, f"{path}: x"), _convert(x_test, size, channels, f"{path}: x_test")
    shape = "×".join(map(str, x.shape[1:]))
    source = f"arrays x, y: {len(classes)} classes, {len(y)} train / {len(y_test)} test samples, {shape}, {split_text}"
    return x, y, x_test, y_test, classes, source


def _read_callable(spec: str, batch_size: int, seed: int, size, channels):
    """``(x_train, y_train, x_test, y_test, classes, source)`` gathered from a callable's batches."""
    from ..core.imports import accepted_keywords, import_callable, one_line as _one_line

    try:
        fn = import_callable(spec, what="data")
    except ModelError as e:
        raise DataError(str(e)) from None
    given = {"batch_size": batch_size, "seed": seed}
    call = {k: given[k] for k in accepted_keywords(fn, ("batch_size", "seed"))}
    try:
        result = fn(**call)
    except Exception as e:      # user code
        raise DataError(f"data {spec} raised {_one_line(e)}") from None
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise DataError(f"data {spec} returned {type(result).__name__}, expected (train, test): two iterables "
                        "of (x, y) batches")
    (x, y), (x_test, y_test) = (_gather(part, f"data {spec}: {name}") for part, name in zip(result, ("train", "test")))
    if x_test.shape[1:] != x.shape[1:]:
        raise DataError(f"data {spec}: test samples are {tuple(x_test.shape[1:])} but train samples are "
                        f"{tuple(x.shape[1:])} (expected equal)")
    num_classes = int(max(y.max(initial=-1), y_test.max(initial=-1))) + 1
    x, x_test = _convert(x, size, channels, f"data {spec}"), _convert(x_test, size, channels, f"data {spec}")
    shape = "×".join(map(str, x.shape[1:]))
    source = f"your batches: {num_classes} classes, {len(y)} train / {len(y_test)} test samples, {shape}"
    return x, y, x_test, y_test, [str(c) for c in range(num_classes)], source


def _gather(batches: Iterable, what: str) -> tuple[np.ndarray, np.ndarray]:
    """All ``(x, y)`` batches of ``batches`` as one float32 array and one label array."""
    xs, ys = [], []
    try:
        iterator = iter(batches)
    except TypeError:
        raise DataError(f"{what} is a {type(batches).__name__}, not an iterable of (x, y) batches") from None
    try:
        for i, batch in enumerate(iterator):
            if not isinstance(batch, (tuple, list)) or len(batch) != 2:
                raise DataError(f"{what}: batch {i} is a {type(batch).__name__}, expected an (x, y) pair")
            bx, by = (b.detach().cpu().numpy() if isinstance(b, torch.Tensor) else np.asarray(b) for b in batch)
            if bx.ndim < 2 or by.ndim != 1 or len(bx) != len(by):
                raise DataError(f"{what}: batch {i} has x {bx.shape} and y {by.shape} (expected N×… and N)")
            if xs and bx.shape[1:] != xs[0].shape[1:]:
                raise DataError(f"{what}: batch {i} has samples {bx.shape[1:]}, batch 0 {xs[0].shape[1:]} "
                                "(expected equal)")
            xs.append(bx)
            ys.append(by)
    except DataError:
        raise
    except Exception as e:      # user code iterating
        from ..core.imports import one_line as _one_line

        raise DataError(f"{what}: iterating the batches raised {_one_line(e)}") from None
    if not xs:
        raise DataError(f"{what}: no batches (expected at least one (x, y) pair)")
    return _images(np.concatenate(xs), f"{what}: x"), _labels(np.concatenate(ys), f"{what}: y")


# --------------------------------------------------------------------------- arrays to a Dataset
def _images(a: np.ndarray, what: str) -> np.ndarray:
    """``N×D``, ``N×C×H×W`` (``N×H×W`` gets C = 1) numbers; uint8 scaled to [0, 1]; float32."""
    if a.dtype == np.uint8:
        out = a.astype(np.float32) / 255.0
    elif np.issubdtype(a.dtype, np.number) and not np.issubdtype(a.dtype, np.complexfloating):
        out = a.astype(np.float32)
    else:
        raise DataError(f"{what} holds {a.dtype} (expected numbers)")
    if out.ndim == 3:
        out = out[:, None]
    if out.ndim not in (2, 4) or len(out) == 0:
        raise DataError(f"{what} has shape {a.shape} (expected N×D features, N×H×W or N×C×H×W images, N ≥ 1)")
    if not np.isfinite(out).all():
        raise DataError(f"{what} holds NaN or infinite values")
    return out


def _labels(a: np.ndarray, what: str) -> np.ndarray:
    if a.ndim != 1 or not (np.issubdtype(a.dtype, np.integer) or a.dtype == bool):
        raise DataError(f"{what} is {a.dtype} of shape {a.shape} (expected one integer label per sample)")
    if len(a) and a.min() < 0:
        raise DataError(f"{what} holds the label {a.min()} (expected labels 0..C-1)")
    return a.astype(np.int64)


def _convert(x: np.ndarray, size: tuple[int, int] | None, channels: int | None, what: str) -> np.ndarray:
    """Images converted to ``channels`` (grey → RGB by repetition, RGB → grey by ITU-R 601 luma) and
    resized bilinearly to ``size``; features (``N×D``) only when neither is asked for."""
    if x.ndim != 4:
        if size is not None or channels is not None:
            raise DataError(f"{what} has shape {x.shape}: image size and channels apply to N×C×H×W images")
        return x
    if channels is not None and x.shape[1] != channels:
        if channels == 3 and x.shape[1] == 1:
            x = np.repeat(x, 3, axis=1)
        elif channels == 1 and x.shape[1] == 3:
            x = np.tensordot(np.array([0.299, 0.587, 0.114], dtype=np.float32), x, axes=([0], [1]))[:, None]
        else:
            raise DataError(f"{what} has {x.shape[1]} channels; cannot convert to {channels}")
    if size is not None and tuple(x.shape[2:]) != size:
        t = torch.nn.functional.interpolate(torch.from_numpy(np.ascontiguousarray(x)), size=size, mode="bilinear",
                                            align_corners=False)
        x = t.numpy()
    return x


def _dataset(name: str, x_train, y_train, x_test, y_test, classes: list[str], source: str, *, mean, std,
             default_stats: bool, batch_size: int, test_batch_size: int, train_subset: int | None,
             test_subset: int | None, seed: int) -> Dataset:
    """Normalise (given or training statistics), take the subsets, wrap in loaders."""
    if len(y_train) == 0 or len(y_test) == 0:
        raise DataError(f"{name}: empty train or test split (expected at least one sample each)")
    scale = 255.0 if x_train.dtype == np.uint8 else 1.0
    per_channel = x_train.ndim == 4
    c = x_train.shape[1] if per_channel else 1
    if mean is None and std is None and not default_stats:
        m, s = np.zeros(c), np.ones(c)
    else:
        m, s = _statistics(x_train, scale, per_channel)
        if mean is not None:
            m = _per_channel(mean, c, "mean")
        if std is not None:
            s = _per_channel(std, c, "std")
    if not (s > 0).all():
        if std is not None:
            raise DataError(f"std must be > 0, got {std!r}")
        raise DataError(f"{name}: the training samples are constant (standard deviation 0); cannot normalise "
                        "(give the standard deviation)")
    train_index = _first_of_permutation(len(y_train), train_subset, seed, "train_subset")
    test_index = _first_of_permutation(len(y_test), test_subset, seed + 1, "test_subset")
    if train_index is not None:
        x_train, y_train = x_train[train_index], y_train[train_index]
    if test_index is not None:
        x_test, y_test = x_test[test_index], y_test[test_index]
    shape = (1, -1, 1, 1) if per_channel else (1, -1)
    mean_t = torch.tensor(m, dtype=torch.float32).view(shape) if per_channel else float(m[0])
    std_t = torch.tensor(s, dtype=torch.float32).view(shape) if per_channel else float(s[0])

    def normalise(x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(x)).to(torch.float32)
        return t.div_(scale).sub_(mean_t).div_(std_t)

    x_tr, x_te = normalise(x_train), normalise(x_test)
    y_tr, y_te = torch.from_numpy(y_train.astype(np.int64)), torch.from_numpy(y_test.astype(np.int64))
    stats = (lambda v: float(v[0]) if len(v) == 1 else tuple(float(e) for e in v))
    return Dataset(
        name=name,
        train=TensorLoader(x_tr, y_tr, batch_size=batch_size, shuffle=True, seed=seed),
        test=TensorLoader(x_te, y_te, batch_size=test_batch_size, shuffle=False),
        num_classes=len(classes),
        input_shape=tuple(x_tr.shape[1:]),
        source=source,
        classes=list(classes),
        mean=stats(m),
        std=stats(s),
    )


def _statistics(x: np.ndarray, scale: float, per_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population standard deviation of ``x / scale``, per channel (axis 1) or overall."""
    axes = (0, 2, 3) if per_channel else None
    data = x.astype(np.float64) / scale
    m = np.atleast_1d(data.mean(axis=axes))
    s = np.atleast_1d(data.std(axis=axes))
    return m, s


def _per_channel(value: Any, channels: int, what: str) -> np.ndarray:
    values = np.atleast_1d(np.asarray(value, dtype=np.float64))
    if values.ndim != 1 or len(values) not in (1, channels) or not np.isfinite(values).all():
        raise DataError(f"{what} is {value!r} (expected one number or one per channel, {channels})")
    return np.broadcast_to(values, (channels,)).copy()


def _size(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    values = (value, value) if isinstance(value, int) else tuple(value)
    if len(values) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise DataError(f"image_size is {value!r} (expected a positive integer or (height, width))")
    return values
