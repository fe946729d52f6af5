"""End-to-end Deep Compression of LeNet-300-100 on scikit-learn digits, checked independently."""

import numpy as np
import pytest
import torch

from efficientdl import data, format, models
from efficientdl.compress import pipeline
from efficientdl.compress.recipe import validate

SPARSITY = 0.9
BITS = 5
RECIPE = {
    "model": "lenet300",
    "data": "digits",
    "seed": 0,
    "batch_size": 64,
    "dense": {"epochs": 3, "lr": 0.05},
    "prune": {"sparsity": SPARSITY, "steps": 2, "epochs": 1, "lr": 0.02, "weight_decay": 1e-4},
    "quantize": {"bits": BITS, "epochs": 1, "lr": 0.002},
    "encode": {"index_bits": 5},
}


def accuracy(model, loader):
    """Top-1 accuracy, computed here rather than with the library's evaluate."""
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    return correct / total


@pytest.fixture(scope="module")
def run():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small matrices: one thread is faster on a shared two-core machine
    try:
        torch.manual_seed(0)
        ds = data.load("digits", batch_size=RECIPE["batch_size"], seed=0)
        model = models.create("lenet300", num_classes=ds.num_classes, in_channels=ds.input_shape[0])
        lines = []
        result = pipeline.run(model, ds.train, ds.test, validate(RECIPE), progress=False, log=lines.append)
    finally:
        torch.set_num_threads(threads)
    return ds, result, lines


def test_report_fields_and_sizes(run):
    _, result, lines = run
    report = result.to_dict()
    for key in ("original_bytes", "compressed_bytes", "ratio", "accuracy_original", "accuracy_compressed", "layers"):
        assert key in report
    assert report["original_bytes"] == 4 * 266_610
    assert report["compressed_bytes"] == len(result.file_bytes)
    assert report["ratio"] == pytest.approx(4 * 266_610 / len(result.file_bytes))
    assert report["ratio"] > 15
    assert [s["stage"] for s in report["stages"]] == ["dense", "prune", "quantize", "huffman"]
    sizes = [s["size_bytes"] for s in report["stages"]]
    assert sizes[0] > sizes[1] > sizes[2] > sizes[3] == len(result.file_bytes)
    assert report["bit_exact"] is True and result.bit_exact
    assert len(lines) == 4
    # the dense model learned something (digits: 10 classes)
    assert report["accuracy_original"] > 0.5


def test_decoded_file_accuracy_equals_in_memory_model(run):
    ds, result, _ = run
    in_memory = accuracy(result.model, ds.test)
    rebuilt = models.create("lenet300", num_classes=10, in_channels=1)
    format.load_into(rebuilt, format.decode(result.file_bytes))
    assert accuracy(rebuilt, ds.test) == in_memory
    assert result.to_dict()["accuracy_compressed"] == in_memory


def test_decoded_weights_and_per_layer_density(run):
    _, result, _ = run
    c = format.decode(result.file_bytes)
    report = result.to_dict()
    layers = {layer["name"]: layer for layer in report["layers"]}
    for name in ("fc1", "fc2", "fc3"):
        module = getattr(result.model, name)
        w = c.tensors[f"{name}.weight"]
        assert torch.equal(w, module.weight.detach())
        n = w.numel()
        keep = int(round((1 - SPARSITY) * n))
        assert int(torch.count_nonzero(w)) == keep
        assert layers[f"{name}.weight"]["density"] == pytest.approx(keep / n)
        assert layers[f"{name}.weight"]["kind"] == "shared"
        assert np.unique(w[w != 0].numpy()).size <= 2 ** BITS - 1
        # biases are stored exactly
        assert torch.equal(c.tensors[f"{name}.bias"], module.bias.detach())
