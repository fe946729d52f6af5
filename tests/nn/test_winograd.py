"""Winograd convolution against direct convolution, the paper's F(2,3) matrices, and the
multiplication counts."""

import pytest
import torch
from torch import nn

from efficientdl.errors import ModelError
from efficientdl.nn.winograd import WinogradConv2d, to_winograd, winograd_matrices


def test_f2_matrices_are_the_papers():
    at, g, bt = winograd_matrices(2)
    paper_bt = torch.tensor([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=torch.float64)
    paper_g = torch.tensor([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=torch.float64)
    paper_at = torch.tensor([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=torch.float64)
    flip = torch.tensor([1.0, 1.0, 1.0, -1.0], dtype=torch.float64)     # the point at infinity's sign
    torch.testing.assert_close(g, paper_g)
    torch.testing.assert_close(bt, paper_bt * flip[:, None])
    torch.testing.assert_close(at, paper_at * flip[None, :])


@pytest.mark.parametrize("m", [2, 3, 4, 6])
def test_one_dimensional_minimal_filtering(m):
    at, g, bt = winograd_matrices(m)
    torch.manual_seed(m)
    filt, d = torch.randn(3, dtype=torch.float64), torch.randn(m + 2, dtype=torch.float64)
    expected = torch.stack([(d[i:i + 3] * filt).sum() for i in range(m)])   # correlation, as conv layers do
    torch.testing.assert_close(at @ ((g @ filt) * (bt @ d)), expected)


@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize("padding", [0, 1, 2])
@pytest.mark.parametrize("cin,cout,h,w", [(1, 1, 3, 3), (3, 5, 11, 9), (16, 8, 14, 14), (4, 4, 7, 12)])
def test_equals_direct_convolution(tile, padding, cin, cout, h, w):
    torch.manual_seed(cin * 10 + cout)
    conv = nn.Conv2d(cin, cout, 3, padding=padding)
    x = torch.randn(2, cin, h, w)
    expected = conv(x)
    got = WinogradConv2d.from_conv(conv, tile)(x)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_multiplication_counts():
    conv = nn.Conv2d(2, 2, 3)
    f2, f4 = WinogradConv2d.from_conv(conv, 2), WinogradConv2d.from_conv(conv, 4)
    assert (f2.multiplies_per_tile, f2.direct_multiplies_per_tile, f2.multiply_reduction) == (16, 36, 2.25)
    assert (f4.multiplies_per_tile, f4.direct_multiplies_per_tile, f4.multiply_reduction) == (36, 144, 4.0)


def test_fp16_runs_and_larger_tiles_lose_more_precision():
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 64, 3, padding=1).double()
    x = torch.randn(1, 64, 16, 16, dtype=torch.float64)
    reference = conv(x)
    errors = {}
    for tile in (2, 4):
        layer = WinogradConv2d.from_conv(conv.half(), tile)
        conv.double()
        errors[tile] = (layer(x.half()).double() - reference).abs().max().item()
    assert errors[4] > errors[2]


def test_unsupported_layers_are_refused_by_name():
    for conv, message in [(nn.Conv2d(2, 2, 5), "3×3"), (nn.Conv2d(2, 2, 3, stride=2), "stride"),
                          (nn.Conv2d(2, 2, 3, dilation=2), "dilation"), (nn.Conv2d(4, 4, 3, groups=2), "groups")]:
        with pytest.raises(ModelError, match=f"features.3: .*{message}"):
            WinogradConv2d.from_conv(conv, 2, name="features.3")
    with pytest.raises(ModelError, match="tile"):
        WinogradConv2d(torch.zeros(2, 2, 3, 3), tile=3)
    with pytest.raises(ModelError, match="expects"):
        WinogradConv2d(torch.zeros(2, 2, 3, 3))(torch.zeros(1, 3, 8, 8))


def test_to_winograd_converts_what_it_can():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 5), nn.Conv2d(4, 2, 3))
    x = torch.randn(1, 1, 12, 12)
    expected = model(x)
    model, converted, skipped = to_winograd(model, tile=4)
    assert converted == ["0", "3"] and list(skipped) == ["2"] and "5×5" in skipped["2"]
    assert isinstance(model[0], WinogradConv2d)
    torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)
