"""Convolution decomposition (spatial k×1/1×k and channel k×k/1×1): exact at full rank
against F.conv2d, error equal to the discarded singular values, hand-counted costs."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from efficientdl.compress.lowrank.conv import conv_low_rank, decompose_conv
from efficientdl.compress.macs import conv2d_macs, conv2d_output_hw, model_macs
from efficientdl.errors import RecipeError

CONFIGS = [  # in, out, kernel, stride, padding, dilation
    (3, 8, 3, 1, 0, 1),
    (4, 6, 5, 2, 2, 1),
    (1, 7, (3, 5), (1, 2), (2, 1), (2, 1)),
    (6, 2, (5, 3), (3, 1), (0, 3), (1, 2)),
    (5, 5, 3, 1, "same", 2),
    (2, 4, (2, 4), 1, "valid", 1),
    (3, 4, (2, 4), 1, "same", (1, 2)),
]


def expected_output(conv, x):
    """conv's output computed by torch's functional convolution (zero padding made explicit)."""
    padding = conv.padding
    if isinstance(padding, str):
        return F.conv2d(x, conv.weight, conv.bias, conv.stride, padding, conv.dilation)
    return F.conv2d(F.pad(x, (padding[1], padding[1], padding[0], padding[0])), conv.weight, conv.bias,
                    conv.stride, 0, conv.dilation)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("scheme", ["spatial", "channel"])
@pytest.mark.parametrize("config", CONFIGS)
def test_full_rank_reproduces_the_convolution(scheme, config):
    c, n, k, stride, padding, dilation = config
    torch.manual_seed(c * n)
    conv = nn.Conv2d(c, n, k, stride=stride, padding=padding, dilation=dilation).double()
    new, info = decompose_conv(conv, scheme, rank=10_000, input_hw=(13, 11))
    x = torch.randn(2, c, 13, 11, dtype=torch.float64)
    out = new(x)
    torch.testing.assert_close(out, expected_output(conv, x), rtol=1e-10, atol=1e-10)
    assert info["rank"] == info["full_rank"] and info["frobenius_error"] == pytest.approx(0, abs=1e-9)
    assert conv2d_output_hw(conv, (13, 11)) == tuple(out.shape[-2:])
    assert info["macs_before"] == conv.weight.numel() * out.shape[-2] * out.shape[-1]


@pytest.mark.parametrize("mode", ["reflect", "circular", "replicate"])
@pytest.mark.parametrize("scheme", ["spatial", "channel"])
def test_padding_modes_split_exactly(mode, scheme):
    torch.manual_seed(3)
    conv = nn.Conv2d(3, 4, (3, 5), padding=(1, 2), padding_mode=mode).double()
    new, _ = decompose_conv(conv, scheme, rank=10_000)
    x = torch.randn(1, 3, 9, 10, dtype=torch.float64)
    expected = F.conv2d(F.pad(x, (2, 2, 1, 1), mode=mode), conv.weight, conv.bias)
    torch.testing.assert_close(new(x), expected, rtol=1e-10, atol=1e-10)


def kernel_from_factors(new, scheme):
    first, second = new[0].weight.detach().double(), new[1].weight.detach().double()
    if scheme == "spatial":   # W[n, c, i, j] = Σ_r H[n, r, 0, j] V[r, c, i, 0]
        return torch.einsum("nrj,rci->ncij", second[:, :, 0, :], first[:, :, :, 0])
    return torch.einsum("nr,rcij->ncij", second[:, :, 0, 0], first)


def matrix_by_loops(w, scheme):
    n, c, kh, kw = w.shape
    m = torch.empty((c * kh, n * kw) if scheme == "spatial" else (n, c * kh * kw), dtype=torch.float64)
    for a in range(n):
        for b in range(c):
            for i in range(kh):
                for j in range(kw):
                    if scheme == "spatial":
                        m[b * kh + i, a * kw + j] = w[a, b, i, j]
                    else:
                        m[a, (b * kh + i) * kw + j] = w[a, b, i, j]
    return m


@pytest.mark.parametrize("scheme", ["spatial", "channel"])
@pytest.mark.parametrize("rank", [1, 3, 7])
def test_error_equals_discarded_singular_values(scheme, rank):
    torch.manual_seed(rank)
    conv = nn.Conv2d(4, 9, (3, 2), stride=(2, 1), padding=1)
    s = torch.linalg.svdvals(matrix_by_loops(conv.weight.detach().double(), scheme))
    new, info = decompose_conv(conv, scheme, rank=rank)
    w_r = kernel_from_factors(new, scheme)
    w = conv.weight.detach().double()
    discarded = math.sqrt(float((s[rank:] ** 2).sum()))
    assert info["frobenius_error"] == pytest.approx(discarded, rel=1e-6)
    assert float(torch.linalg.norm(w - w_r)) == pytest.approx(discarded, rel=1e-4, abs=1e-5)
    assert info["discarded_energy"] == pytest.approx(discarded ** 2 / float((s ** 2).sum()), rel=1e-6)
    x = torch.randn(2, 4, 8, 7)
    expected = F.conv2d(x.double(), w_r, conv.bias.double(), stride=(2, 1), padding=1)
    torch.testing.assert_close(new(x).double(), expected, rtol=1e-4, atol=1e-5)


def test_lenet5_conv2_costs_by_hand():
    conv = nn.Conv2d(20, 50, 5)   # LeNet-5's conv2: 12×12 in, 8×8 out
    assert conv2d_macs(conv, (12, 12)) == 25_000 * 64
    _, spatial = decompose_conv(conv, "spatial", rank=10, input_hw=(12, 12))
    # 5×1 conv 20→10 on 12×12 → 8×12; 1×5 conv 10→50 → 8×8
    assert spatial["params_after"] == 10 * (20 * 5 + 50 * 5)
    assert spatial["macs_after"] == 10 * 20 * 5 * 8 * 12 + 50 * 10 * 5 * 8 * 8
    _, channel = decompose_conv(conv, "channel", rank=10, input_hw=(12, 12))
    assert channel["params_after"] == 10 * (20 * 25 + 50)
    assert channel["macs_after"] == 10 * 500 * 64 + 50 * 10 * 64
    assert spatial["full_rank"] == 100 and channel["full_rank"] == 50


def test_model_level_settings_per_layer_and_mac_report():
    from efficientdl import models

    model = models.create("lenet5")
    model, report = conv_low_rank(model, scheme={"conv1": "channel", "conv2": "spatial"},
                                  rank={"conv1": 4}, reduction={"conv2": 4})
    assert report["conv1"]["rank"] == 4 and report["conv1"]["macs_before"] == 20 * 25 * 24 * 24
    assert report["conv2"]["rank"] == 17                     # 17 · 350 ≤ 25,000 / 4 < 18 · 350
    assert report["conv2"]["macs_before"] == 1_600_000
    macs = model_macs(model, (1, 28, 28))
    assert macs["conv2.0"] + macs["conv2.1"] == report["conv2"]["macs_after"]
    assert macs["conv1.0"] + macs["conv1.1"] == report["conv1"]["macs_after"]
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    model2, report2 = conv_low_rank(models.create("lenet5"), "channel", energy={"conv2": 0.5})
    assert list(report2) == ["conv2"] and 1 <= report2["conv2"]["rank"] < 50


def test_decomposed_model_survives_file_and_checkpoint_round_trip(tmp_path):
    from efficientdl import format as fmt, models, train

    torch.manual_seed(0)
    model = models.create("lenet5")
    model, _ = conv_low_rank(model, scheme={"conv1": "channel", "conv2": "spatial"}, rank={"conv1": 4, "conv2": 7})
    assert model.edl_arch["transforms"] == [{"op": "conv_lowrank", "layers": {
        "conv1": {"scheme": "channel", "rank": 4}, "conv2": {"scheme": "spatial", "rank": 7}}}]
    x = torch.randn(3, 1, 28, 28)
    expected = model.eval()(x)
    fmt.save(model, tmp_path / "m.edlz", coding="fixed")
    rebuilt = fmt.load(tmp_path / "m.edlz")
    assert rebuilt.conv2[0].weight.shape == (7, 20, 5, 1) and rebuilt.conv2[1].weight.shape == (50, 7, 1, 5)
    assert torch.equal(rebuilt(x), expected)
    train.save_checkpoint(model, tmp_path / "m.pt")
    assert torch.equal(train.load_checkpoint(tmp_path / "m.pt")(x), expected)


@pytest.mark.parametrize("call,message", [
    (lambda m: conv_low_rank(m, "spatial", rank=2), "layer 'b' is a grouped convolution \\(groups=2\\)"),
    (lambda m: conv_low_rank(m, "diagonal", rank=2, layers=["a"]), "unknown scheme 'diagonal'"),
    (lambda m: conv_low_rank(m, "channel", rank=2, layers=["fc"]), "'fc' is not an nn.Conv2d layer"),
    (lambda m: conv_low_rank(m, "channel", rank={"nope": 2}), "'nope' matches no"),
    (lambda m: conv_low_rank(m, "channel", rank=0, layers=["a"]), "rank must be ≥ 1"),
    (lambda m: conv_low_rank(m, "channel", rank=2, energy=0.5, layers=["a"]), "exactly one"),
])
def test_bad_input_is_refused_in_one_line(call, message):
    model = nn.Sequential()
    model.add_module("a", nn.Conv2d(4, 4, 3))
    model.add_module("b", nn.Conv2d(4, 4, 3, groups=2))
    model.add_module("fc", nn.Linear(4, 2))
    with pytest.raises(RecipeError, match=message) as info:
        call(model)
    assert "\n" not in str(info.value)
