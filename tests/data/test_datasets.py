"""Data set loading: hand-built IDX directories, the digits fallback, the real Fashion-MNIST."""

import gzip
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import efficientdl.data.datasets as datasets
from efficientdl.data import Dataset, TensorLoader, find_fashion_mnist, load
from efficientdl.errors import DataError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
NAMES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def write_idx_ubyte(path: Path, dims: list[int], values: list[int], compress: bool) -> None:
    data = struct.pack(">BBBB", 0, 0, 0x08, len(dims)) + struct.pack(f">{len(dims)}I", *dims) + bytes(values)
    path.write_bytes(gzip.compress(data) if compress else data)


def make_idx_dir(directory: Path, n_train: int = 12, n_test: int = 5, side: int = 28) -> dict:
    """Four tiny IDX files (train gzipped, test raw); returns the pixel values and labels used."""
    directory.mkdir(parents=True, exist_ok=True)
    pixels = side * side
    train_px = [(3 * i + 7 * (i // pixels)) % 256 for i in range(n_train * pixels)]
    test_px = [(5 * i + 1) % 256 for i in range(n_test * pixels)]
    train_y = [i % 10 for i in range(n_train)]
    test_y = [(9 - i) % 10 for i in range(n_test)]
    write_idx_ubyte(directory / (NAMES[0] + ".gz"), [n_train, side, side], train_px, True)
    write_idx_ubyte(directory / (NAMES[1] + ".gz"), [n_train], train_y, True)
    write_idx_ubyte(directory / NAMES[2], [n_test, side, side], test_px, False)
    write_idx_ubyte(directory / NAMES[3], [n_test], test_y, False)
    return {"train_px": train_px, "test_px": test_px, "train_y": train_y, "test_y": test_y}


@pytest.fixture
def no_fashion(monkeypatch, tmp_path):
    """Hide every Fashion-MNIST location."""
    monkeypatch.delenv("EDL_DATA_DIR", raising=False)
    monkeypatch.setattr(datasets, "DEFAULT_FASHION_MNIST_DIR", str(tmp_path / "nowhere"))


def test_hand_built_directory_loads_and_normalizes(tmp_path, no_fashion):
    raw = make_idx_dir(tmp_path / "fm")
    dataset = load("fashion-mnist", data_dir=tmp_path / "fm", batch_size=4, test_batch_size=2)
    assert isinstance(dataset, Dataset)
    assert dataset.name == "fashion-mnist"
    assert dataset.input_shape == (1, 28, 28)
    assert dataset.num_classes == 10 and len(dataset.classes) == 10
    assert str(tmp_path / "fm") in dataset.source
    # Reference normalization in plain Python: population mean/std of the training pixels / 255.
    scaled = [v / 255 for v in raw["train_px"]]
    mean = sum(scaled) / len(scaled)
    std = math.sqrt(sum((v - mean) ** 2 for v in scaled) / len(scaled))
    assert dataset.mean == pytest.approx(mean, rel=1e-12)
    assert dataset.std == pytest.approx(std, rel=1e-12)
    test_x = dataset.test.x
    assert test_x.shape == (5, 1, 28, 28) and test_x.dtype == torch.float32
    expected_first_test = [(v / 255 - mean) / std for v in raw["test_px"][: 28 * 28]]
    assert test_x[0].ravel().tolist() == pytest.approx(expected_first_test, abs=1e-5)
    assert dataset.test.y.tolist() == raw["test_y"]  # test split keeps file order
    assert sorted(dataset.train.y.tolist()) == sorted(raw["train_y"])
    assert dataset.train.dataset_size == 12 and len(dataset.train) == 3
    assert len(dataset.test) == 3  # 5 samples in batches of 2, last one partial


def test_subsets_are_prefixes_of_one_seeded_permutation(tmp_path, no_fashion):
    make_idx_dir(tmp_path / "fm", n_train=30, n_test=20)
    small = load("fashion-mnist", data_dir=tmp_path / "fm", train_subset=5, test_subset=4, seed=3)
    large = load("fashion-mnist", data_dir=tmp_path / "fm", train_subset=10, test_subset=8, seed=3)
    other = load("fashion-mnist", data_dir=tmp_path / "fm", train_subset=10, seed=4)
    assert small.train.dataset_size == 5 and small.test.dataset_size == 4
    assert torch.equal(small.train.x, large.train.x[:5])
    assert torch.equal(small.test.x, large.test.x[:4])
    assert not torch.equal(other.train.x, large.train.x)
    # The normalization statistics come from the whole training split, not the subset.
    assert small.mean == large.mean and small.std == large.std


def test_bad_subset_size(tmp_path, no_fashion):
    make_idx_dir(tmp_path / "fm")
    with pytest.raises(DataError, match="train_subset"):
        load("fashion-mnist", data_dir=tmp_path / "fm", train_subset=0)


def test_env_var_directory_for_mnist(tmp_path, monkeypatch):
    make_idx_dir(tmp_path / "root" / "mnist")
    monkeypatch.setenv("EDL_DATA_DIR", str(tmp_path / "root"))
    dataset = load("mnist")
    assert dataset.name == "mnist"
    assert dataset.classes == [str(d) for d in range(10)]
    assert dataset.train.dataset_size == 12


def test_mnist_without_directory_is_an_error(monkeypatch):
    monkeypatch.delenv("EDL_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="EDL_DATA_DIR"):
        load("mnist")


def test_find_fashion_mnist_order(tmp_path, monkeypatch):
    make_idx_dir(tmp_path / "explicit")
    make_idx_dir(tmp_path / "env")
    make_idx_dir(tmp_path / "default")
    monkeypatch.setattr(datasets, "DEFAULT_FASHION_MNIST_DIR", str(tmp_path / "default"))
    monkeypatch.setenv("EDL_DATA_DIR", str(tmp_path / "env"))
    assert find_fashion_mnist(tmp_path / "explicit") == tmp_path / "explicit"
    assert find_fashion_mnist() == tmp_path / "env"
    monkeypatch.setenv("EDL_DATA_DIR", str(tmp_path / "empty"))
    assert find_fashion_mnist() == tmp_path / "default"
    monkeypatch.delenv("EDL_DATA_DIR")
    assert find_fashion_mnist() == tmp_path / "default"
    monkeypatch.setattr(datasets, "DEFAULT_FASHION_MNIST_DIR", str(tmp_path / "gone"))
    assert find_fashion_mnist() is None


def test_missing_data_dir_names_the_path(tmp_path):
    missing = tmp_path / "no-such-dir"
    with pytest.raises(DataError) as info:
        load("fashion-mnist", data_dir=missing)
    assert str(missing) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(DataError, match="no-such-dir"):
        find_fashion_mnist(missing)


def test_incomplete_data_dir_names_the_missing_files(tmp_path):
    make_idx_dir(tmp_path / "fm")
    (tmp_path / "fm" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=r"fm.*lacks t10k-labels-idx1-ubyte"):
        load("fashion-mnist", data_dir=tmp_path / "fm")


def test_label_count_mismatch(tmp_path, no_fashion):
    make_idx_dir(tmp_path / "fm")
    write_idx_ubyte(tmp_path / "fm" / NAMES[3], [4], [1, 2, 3, 4], False)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.*4 labels for 5 images"):
        load("fashion-mnist", data_dir=tmp_path / "fm")


def test_fallback_to_digits(no_fashion):
    dataset = load("fashion-mnist")
    assert dataset.name == "digits"
    assert "Fashion-MNIST not found at" in dataset.source
    assert "using scikit-learn digits" in dataset.source


def test_no_fallback_raises(no_fashion):
    with pytest.raises(DataError, match="Fashion-MNIST not found"):
        load("fashion-mnist", fallback=False)


def test_digits_split_and_shape():
    from sklearn.datasets import load_digits

    reference = load_digits()
    dataset = load("digits", batch_size=100)
    assert dataset.train.dataset_size == 1437 and dataset.test.dataset_size == 360
    assert dataset.train.x.shape == (1437, 1, 28, 28) and dataset.test.x.shape == (360, 1, 28, 28)
    assert dataset.input_shape == (1, 28, 28)
    all_labels = torch.cat([dataset.train.y, dataset.test.y]).numpy()
    assert np.bincount(all_labels).tolist() == np.bincount(reference.target).tolist()
    test_counts = np.bincount(dataset.test.y.numpy(), minlength=10)
    assert test_counts.min() >= 30  # stratified: about 36 per class
    # Normalized with the training statistics: mean 0, std 1 over the training split.
    assert float(dataset.train.x.double().mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(dataset.train.x.double().std(unbiased=False)) == pytest.approx(1.0, abs=1e-5)
    # Deterministic split and content.
    again = load("digits")
    assert torch.equal(again.test.x, dataset.test.x) and torch.equal(again.test.y, dataset.test.y)


def bilinear_matrix(out_size: int, in_size: int) -> np.ndarray:
    """Row i: weights of the source pixels for output pixel i (half-pixel centres, edges clamped)."""
    matrix = np.zeros((out_size, in_size))
    for i in range(out_size):
        src = max((i + 0.5) * in_size / out_size - 0.5, 0.0)
        low = int(math.floor(src))
        frac = src - low
        matrix[i, low] += 1 - frac
        matrix[i, min(low + 1, in_size - 1)] += frac
    return matrix


def test_digits_upsampling_is_bilinear_of_the_original():
    from sklearn.datasets import load_digits

    dataset = load("digits")
    a = bilinear_matrix(28, 8)
    reference = np.einsum("ij,njk,lk->nil", a, load_digits().images / 16.0, a)  # A @ img @ A.T for every image
    for k in range(0, 360, 45):
        image = dataset.test.x[k, 0].double().numpy() * dataset.std + dataset.mean  # back to [0, 1]
        distance = np.abs(reference - image).max(axis=(1, 2))
        assert distance.min() < 1e-5, k
        assert dataset.test.y[k] == load_digits().target[distance.argmin()]


def test_unknown_name_lists_known_names():
    with pytest.raises(DataError, match=r"'cifar'.*fashion-mnist, mnist, digits"):
        load("cifar")


def test_tensor_loader_batches_and_shuffle():
    x = torch.arange(10).float().unsqueeze(1)
    y = torch.arange(10)
    plain = TensorLoader(x, y, batch_size=4)
    assert len(plain) == 3 and plain.dataset_size == 10
    assert [b[1].tolist() for b in plain] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert len(TensorLoader(x, y, batch_size=4, drop_last=True)) == 2
    assert [len(b[1]) for b in TensorLoader(x, y, batch_size=4, drop_last=True)] == [4, 4]
    shuffled = TensorLoader(x, y, batch_size=3, shuffle=True, seed=5)
    epoch0 = torch.cat([b[1] for b in shuffled])
    epoch1 = torch.cat([b[1] for b in shuffled])
    assert sorted(epoch0.tolist()) == list(range(10)) and sorted(epoch1.tolist()) == list(range(10))
    assert epoch0.tolist() != epoch1.tolist()
    for xb, yb in shuffled:
        assert xb.squeeze(1).long().tolist() == yb.tolist()  # x and y stay paired
    shuffled.set_epoch(0)
    assert torch.cat([b[1] for b in shuffled]).tolist() == epoch0.tolist()
    fresh = TensorLoader(x, y, batch_size=3, shuffle=True, seed=5)
    fresh.set_epoch(1)
    assert torch.cat([b[1] for b in fresh]).tolist() == epoch1.tolist()


def test_tensor_loader_rejects_bad_input():
    with pytest.raises(DataError, match="batch_size"):
        TensorLoader(torch.zeros(3, 1), torch.zeros(3), batch_size=0)
    with pytest.raises(DataError, match="3 samples but y has 2"):
        TensorLoader(torch.zeros(3, 1), torch.zeros(2))


@pytest.mark.skipif(not DEBIAN_DIR.is_dir(), reason="Fashion-MNIST is not installed at the Debian path")
def test_real_fashion_mnist(monkeypatch):
    monkeypatch.delenv("EDL_DATA_DIR", raising=False)
    dataset = load("fashion-mnist")
    assert dataset.name == "fashion-mnist"
    assert dataset.train.x.shape == (60000, 1, 28, 28)
    assert dataset.test.x.shape == (10000, 1, 28, 28)
    assert int(dataset.train.y.min()) == 0 and int(dataset.train.y.max()) == 9
    assert int(dataset.test.y.min()) == 0 and int(dataset.test.y.max()) == 9
    assert torch.bincount(dataset.train.y).tolist() == [6000] * 10  # Fashion-MNIST is balanced
    assert torch.bincount(dataset.test.y).tolist() == [1000] * 10
    assert dataset.mean == pytest.approx(0.2860, abs=1e-3)  # published statistics
    assert dataset.std == pytest.approx(0.3530, abs=1e-3)
    assert dataset.classes[9] == "Ankle boot"
