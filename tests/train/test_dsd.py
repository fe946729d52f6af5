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


class Tagger(nn.Module):
    """Embedding → LSTM → Linear: every kind of compressible tensor, not only Linear/Conv weights."""

    def __init__(self, vocab=10, dim=8, hidden=12):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.lstm = nn.LSTM(dim, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, 2)

    def forward(self, tokens):
        out, _ = self.lstm(self.embed(tokens))
        return self.fc(out[:, -1])


def test_redense_lifts_the_masks_of_embedding_and_lstm_too():
    from efficientdl.compress.layers import compressible_tensors
    from efficientdl.compress.pruning.prune import weight_mask

    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 10, (128, 5), generator=g)            # every token occurs: every row trains
    labels = (tokens[:, -1] >= 5).long()
    loader = TensorLoader(tokens, labels, batch_size=32, shuffle=True, seed=0)
    torch.manual_seed(0)
    model = Tagger()
    trainer = Trainer(loader, None, epochs=1, lr=0.5, seed=0, progress=False)
    pruned = {}
    original_fit = trainer.fit

    def fit(m, epochs=None, lr=None, description="train", on_epoch=None):
        if description == "DSD re-dense":    # what the sparse phase left: a mask on every tensor
            for t in compressible_tensors(m):
                mask = weight_mask(t.module, t.attr)
                assert mask is None, f"{t.key} still masked when the re-dense phase starts"
                pruned[t.key] = int((t.value == 0).sum())
        return original_fit(m, epochs, lr, description, on_epoch)

    trainer.fit = fit
    result = dsd(model, trainer, sparsity=0.5, epochs=(0, 1, 2), lr=0.5, pretrained=True)
    keys = {"embed", "lstm.weight_ih_l0", "lstm.weight_hh_l0", "fc"}
    assert set(result["sparsity"]) == keys and all(s == 0.5 for s in result["sparsity"].values())
    assert set(pruned) == keys
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    tensors = {"embed": model.embed.weight, "lstm.weight_ih_l0": model.lstm.weight_ih_l0,
               "lstm.weight_hh_l0": model.lstm.weight_hh_l0, "fc": model.fc.weight}
    for key, w in tensors.items():
        assert pruned[key] == w.numel() // 2                                  # exactly half were zero …
        assert int((w == 0).sum()) < pruned[key] // 4, key                    # … and grew back
