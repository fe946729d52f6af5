"""TTLinear against its dense matrix, entry by entry from the cores, and hand-counted costs."""

import itertools
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from efficientdl.errors import ModelError
from efficientdl.nn import TTLinear, tt_ranks

SHAPES = [([4], [3], 1), ([2, 3, 4], [3, 2, 2], [2, 3]), ([7, 7, 4, 4], [3, 4, 5, 5], 8),
          ([5, 5], [4, 25], [1, 3, 1]), ([2, 2, 2, 2, 2], [1, 2, 1, 2, 1], 3)]


@pytest.mark.parametrize("in_modes,out_modes,ranks", SHAPES)
@pytest.mark.parametrize("batch", [(), (3,), (2, 5)])
def test_forward_equals_dense_product(in_modes, out_modes, ranks, batch):
    torch.manual_seed(len(in_modes))
    layer = TTLinear(in_modes, out_modes, ranks).double()
    x = torch.randn(*batch, math.prod(in_modes), dtype=torch.float64)
    torch.testing.assert_close(layer(x), x @ layer.full_weight().t() + layer.bias)


def test_full_weight_entries_are_products_of_core_slices():
    torch.manual_seed(1)
    layer = TTLinear([2, 3, 2], [2, 1, 3], [1, 2, 3, 1], bias=False).double().requires_grad_(False)
    w = layer.full_weight()
    assert w.shape == (6, 12)
    for i in itertools.product(range(2), range(3), range(2)):
        for j in itertools.product(range(2), range(1), range(3)):
            product = torch.ones(1, 1, dtype=torch.float64)
            for k, core in enumerate(layer.cores):
                product = product @ core[:, i[k], j[k], :]
            row = (j[0] * 1 + j[1]) * 3 + j[2]
            col = (i[0] * 3 + i[1]) * 2 + i[2]
            assert float(w[row, col]) == pytest.approx(float(product), abs=1e-12)
    x = torch.randn(4, 12, dtype=torch.float64)
    torch.testing.assert_close(layer(x), x @ w.t())


def test_parameter_and_mac_counts_by_hand():
    layer = TTLinear([2, 3, 4], [3, 2, 2], [1, 2, 3, 1])
    # cores 1·2·3·2 + 2·3·2·3 + 3·4·2·1
    assert [tuple(c.shape) for c in layer.cores] == [(1, 2, 3, 2), (2, 3, 2, 3), (3, 4, 2, 1)]
    assert layer.weight_count() == 12 + 36 + 24
    assert sum(p.numel() for p in layer.parameters()) == 72 + 12
    # step k: (n_1⋯n_{k-1}) r_{k-1} m_k n_k r_k (m_{k+1}⋯m_d) = 1·1·2·3·2·12 + 3·2·3·2·3·4 + 6·3·4·2·1·1
    assert layer.macs() == 144 + 432 + 144
    with FlopCounterMode(display=False) as counter:
        layer(torch.randn(1, 24))
    assert counter.get_total_flops() == 2 * layer.macs()


def test_ranks_are_capped_and_initial_variance_matches_linear():
    # caps: min(21, 11,760) = 21, min(588, 400) = 400, min(11,760, 20) = 20
    assert tt_ranks(100, [7, 7, 4, 4], [3, 4, 5, 5]) == [1, 21, 100, 20, 1]
    assert tt_ranks([1, 3, 1], [2, 2], [2, 2]) == [1, 3, 1]
    torch.manual_seed(0)
    w = TTLinear([8, 8, 8], [8, 8, 8], 16, bias=False).full_weight().detach()
    assert float(w.var()) == pytest.approx(1 / (3 * 512), rel=0.15)


@pytest.mark.parametrize("args,message", [
    (([2, 3], [4], 2), "same length"),
    (([2, 0], [2, 2], 2), "positive integers"),
    (([2, 3], [2, 2], 0), "≥ 1"),
    (([2, 3], [2, 2], [2, 2]), "expected 1 inner ranks"),
    (([2, 3], [2, 2], [2, 2, 1]), "first and last rank must be 1"),
    (([2, 3], [2, 2], "4"), "integer or a list"),
])
def test_bad_construction_is_refused_in_one_line(args, message):
    with pytest.raises(ModelError, match=message) as info:
        TTLinear(*args)
    assert "\n" not in str(info.value)


def test_wrong_input_width_is_refused():
    with pytest.raises(ModelError, match="input has 5 features, expected 6"):
        TTLinear([2, 3], [2, 2], 2)(torch.randn(1, 5))
