"""DSD: the sparse phase keeps the pruned weights at zero, the re-dense phase lets them
grow back from zero, and the result records every phase."""

import torch
from torch import nn
from torch.nn.utils import parametrize

from efficientdl.data import TensorLoader
from efficientdl.train import Trainer
from efficientdl.train.dsd import dense_baseline, dsd


def toy_data():
    torch.manual_seed(0)
    x = torch.randn(256, 20)
    y = (x[:, :5].sum(1) > 0).long()
    return TensorLoader(x, y, batch_size=32, shuffle=True, seed=0), TensorLoader(x, y, batch_size=64)


def test_phases_and_masks():
    train_loader, test_loader = toy_data()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 2))
    trainer = Trainer(train_loader, test_loader, epochs=1, lr=0.1, seed=0, progress=False)
    seen = {}
    original_fit = trainer.fit

    def fit(m, epochs=None, lr=None, description="train", on_epoch=None):
        if description == "DSD sparse":
            seen["zeros_before"] = int((m[0].weight == 0).sum())
        out = original_fit(m, epochs, lr, description, on_epoch)
        if description == "DSD sparse":
            seen["zeros_after"] = int((m[0].weight == 0).sum())
        if description == "DSD re-dense":
            seen["lr"] = lr
        return out

    trainer.fit = fit
    result = dsd(model, trainer, sparsity=0.5, epochs=(2, 2, 2), lr=0.1)
    assert set(result) >= {"dense", "sparse", "redense", "sparsity", "history"}
    assert seen["zeros_before"] == seen["zeros_after"] == 320            # 50% of 20 × 32, held through retraining
    assert seen["lr"] == 0.1 * 0.1
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert int((model[0].weight == 0).sum()) < 320                      # re-dense: pruned weights grew back
    assert result["sparsity"]["0"] == 0.5 and 0.0 <= result["redense"] <= 1.0
    assert [len(result["history"][p]) for p in ("dense", "sparse", "redense")] == [2, 2, 2]


def test_dense_baseline_trains_for_the_total():
    train_loader, test_loader = toy_data()
    model = nn.Sequential(nn.Linear(20, 2))
    acc = dense_baseline(model, Trainer(train_loader, test_loader, epochs=1, lr=0.1, seed=0, progress=False), 3, 0.1)
    assert 0.5 < acc <= 1.0
