"""Ternary and binary weights: the TTQ forward and gradients on a hand-checked example,
the TWN and binary baselines by hand, and 2-bit storage in the compressed file."""

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from efficientdl import format as fmt
from efficientdl.compress.quantization.ternary import BinaryWeight, FixedTernaryWeight, TernaryWeight, ternarize, ternary_state
from efficientdl.errors import RecipeError


def test_ttq_forward_and_gradients_by_hand():
    w = torch.tensor([0.5, -0.02, -0.8, 0.9], requires_grad=True)
    p = TernaryWeight(w, threshold=0.05, mean_scale_grad=False)   # Δ = 0.05 · 0.9 = 0.045
    assert p.wp.item() == pytest.approx((0.5 + 0.9) / 2) and p.wn.item() == pytest.approx(0.8)
    with torch.no_grad():
        p.wp.fill_(2.0)
        p.wn.fill_(3.0)
    wt = p(w)
    assert wt.tolist() == [2.0, 0.0, -3.0, 2.0]
    g = torch.tensor([1.0, 2.0, 3.0, 4.0])
    (wt * g).sum().backward()
    assert float(p.wp.grad) == 1 + 4                         # Σ over I_p
    assert float(p.wn.grad) == -3                            # −Σ over I_n (W_n is a magnitude)
    assert w.grad.tolist() == [2.0 * 1, 2.0, 3.0 * 3, 2.0 * 4]  # W_p·g, g, W_n·g
    assert p.shares(w.detach()) == (0.25, 0.25, 0.5)
    mean = TernaryWeight(w, threshold=0.05)                   # default: the mean over I_p and I_n
    w.grad = None
    (mean(w) * g).sum().backward()
    assert float(mean.wp.grad) == (1 + 4) / 2 and float(mean.wn.grad) == -3 / 1


def test_ttq_fixed_sparsity():
    w = torch.linspace(-1, 1, 101)
    p = TernaryWeight(w, sparsity=0.4)
    _, zero, _ = p.shares(w)
    assert zero == pytest.approx(0.4, abs=0.02)
    with pytest.raises(RecipeError):
        TernaryWeight(w, sparsity=1.0)


def test_twn_and_binary_by_hand():
    w = torch.tensor([0.4, -0.1, -0.6, 0.05], requires_grad=True)   # mean|w| = 0.2875, Δ = 0.20125
    q = FixedTernaryWeight()(w)
    assert q.tolist() == pytest.approx([0.5, 0.0, -0.5, 0.0])         # α = mean(0.4, 0.6)
    q.sum().backward()
    assert w.grad.tolist() == [1.0, 1.0, 1.0, 1.0]                   # straight through
    b = BinaryWeight()(torch.tensor([0.4, -0.1, 0.0, -0.3]))
    assert b.tolist() == pytest.approx([0.2, -0.2, 0.2, -0.2])


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc1 = nn.Linear(4 * 36, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(torch.relu(self.conv(x)).flatten(1))))


@pytest.mark.parametrize("method,values", [("ttq", 3), ("twn", 3), ("binary", 2)])
def test_ternarize_and_store_at_two_bits(tmp_path, method, values):
    torch.manual_seed(0)
    model = Net()
    names = ternarize(model, method)
    assert names == ["fc1"]                                 # first and last kept in full precision
    assert len(torch.unique(model.fc1.weight.detach())) == values
    x = torch.randn(2, 1, 8, 8)
    expected = model(x).detach()
    path = tmp_path / "t.edlz"
    fmt.save(model, path)
    rec = {r.name: r for r in fmt.read(path).layers}["fc1.weight"]
    assert rec.kind == "codes" and rec.weight_bits == 2          # dense ternary: a 2-bit code per weight
    loaded = fmt.load(path, model=Net())
    torch.testing.assert_close(loaded(x), expected)
    if method == "ttq":
        state = ternary_state(model)["fc1"]
        assert state["wp"] > 0 and state["wn"] > 0
        assert state["negative"] + state["zero"] + state["positive"] == pytest.approx(1)


def test_ternarize_all_layers_and_bad_method():
    model = Net()
    assert ternarize(model, "ttq", keep_first_last=False) == ["conv", "fc1", "fc2"]
    assert all(parametrize.is_parametrized(m, "weight") for m in (model.conv, model.fc1, model.fc2))
    with pytest.raises(RecipeError, match="method"):
        ternarize(Net(), "quaternary")
