"""Pruning criteria and mask selections, against hand-worked masks."""

import pytest
import torch
from torch import nn

from efficientdl.compress.pruning import (CRITERIA, SELECTIONS, PruningContext, global_mask, magnitude_mask,
                                          parse_pattern, prune_once, weight_mask)
from efficientdl.errors import RecipeError


def test_magnitude_mask_breaks_ties_by_position():
    w = torch.tensor([0.5, -1.0, 0.5, 0.5, 0.1, -0.5])
    # keep 3 of 6: -1.0 first, then the first two of the four tied 0.5s (positions 0 and 2)
    assert magnitude_mask(w, 0.5).tolist() == [True, True, True, False, False, False]
    # keep 4: positions 0, 2, 3 of the ties come before position 5
    assert magnitude_mask(w, 1 / 3).tolist() == [True, True, True, True, False, False]


def test_masks_live_on_the_weights_device():
    w = torch.randn(4, 4, device="meta")
    assert magnitude_mask(w, 0.5).device.type == "meta"


def test_n_m_keeps_exactly_n_in_every_group():
    torch.manual_seed(0)
    w = torch.randn(6, 16)
    mask = SELECTIONS.get("n:m")(CRITERIA.get("magnitude")(w, PruningContext()), (2, 4))
    groups = mask.reshape(-1, 4)
    assert (groups.sum(1) == 2).all()
    # the kept two of each group are its two largest magnitudes
    kept = torch.where(groups, w.abs().reshape(-1, 4), torch.full_like(groups, -1.0, dtype=w.dtype))
    assert torch.equal(kept.max(1).values, w.abs().reshape(-1, 4).max(1).values)
    assert torch.equal(torch.sort(w.abs().reshape(-1, 4), 1, descending=True).values[:, :2].sum(1),
                       (w.abs().reshape(-1, 4) * groups).sum(1))


def test_n_m_on_a_convolution_groups_the_input_dimension():
    conv = nn.Conv2d(4, 3, 2)                # rows of 4 · 2 · 2 = 16 weights
    mask = SELECTIONS.get("n:m")(conv.weight.abs(), (1, 4))
    assert mask.shape == conv.weight.shape and int(mask.sum()) == 3 * 16 // 4


def test_n_m_refuses_a_row_that_does_not_split():
    with pytest.raises(ValueError, match="groups of 4"):
        SELECTIONS.get("n:m")(torch.ones(2, 6), (2, 4))


@pytest.mark.parametrize("text, want", [("2:4", (2, 4)), ("4:8", (4, 8)), ("0:1", (0, 1))])
def test_parse_pattern(text, want):
    assert parse_pattern(text) == want


@pytest.mark.parametrize("text", ["2-4", "5:4", "a:b", "2:0", "1:2:3"])
def test_parse_pattern_refuses(text):
    with pytest.raises(ValueError):
        parse_pattern(text)


def test_global_mask_uses_one_threshold_across_tensors():
    a, b = torch.tensor([0.1, 0.9, 0.2]), torch.tensor([0.8, 0.3, 0.7, 0.05])
    ma, mb = global_mask([a, b], 4 / 7)          # keep 3 of 7: 0.9, 0.8, 0.7
    assert ma.tolist() == [False, True, False] and mb.tolist() == [True, False, True, False]


def test_prune_once_with_a_pattern_and_mixed_targets():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    prune_once(model, sparsity={"0": 0.5}, pattern={"2": "2:4"})
    assert int(weight_mask(model[0]).sum()) == 32
    assert (weight_mask(model[2]).reshape(-1, 4).sum(1) == 2).all()
    with pytest.raises(RecipeError, match="both 'sparsity' and 'pattern' select '0'"):
        prune_once(model, sparsity={"0": 0.5}, pattern={"0": "2:4"})
    with pytest.raises(RecipeError, match="pattern for '2'"):
        prune_once(model, pattern={"2": "3:2"})
    with pytest.raises(RecipeError, match="unknown pruning criterion 'hessian'"):
        prune_once(model, sparsity=0.5, criterion="hessian")


def test_a_registered_criterion_is_used_with_its_statistics():
    """A new criterion is one registry entry; its context carries the tensor and the statistics."""
    seen = {}

    def by_column(weight, context):
        seen[context.tensor.key] = context.statistics
        return weight.abs() * context.statistics            # Wanda-style |W| · ‖X_j‖

    CRITERIA.register("test-by-column", by_column)
    try:
        layer = nn.Sequential(nn.Linear(2, 1, bias=False))
        with torch.no_grad():
            layer[0].weight.copy_(torch.tensor([[1.0, 0.5]]))
        prune_once(layer, sparsity=0.5, criterion="test-by-column", statistics={"0": torch.tensor([0.1, 10.0])})
        assert seen["0"].tolist() == pytest.approx([0.1, 10.0])
        assert weight_mask(layer[0]).tolist() == [[False, True]]   # 1·0.1 < 0.5·10
    finally:
        CRITERIA._entries.pop("test-by-column")
