"""Data loading: the IDX reader, Fashion-MNIST / MNIST / digits, your own data (image folders, .npz,
callables: :mod:`efficientdl.data.user`), in-memory batch loaders."""

from efficientdl.data.datasets import Dataset, TensorLoader, find_fashion_mnist, load
from efficientdl.data.idx import read_idx

__all__ = ["load", "find_fashion_mnist", "read_idx", "Dataset", "TensorLoader"]
