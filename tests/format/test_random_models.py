"""Round trip of 500 randomly generated models through pruning, weight sharing and the
file: random layer types, shapes, sparsities, bits, index bits and coding; every tensor
must come back bit for bit."""

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from efficientdl import format as fmt
from efficientdl.compress.layers import compressible_tensors
from efficientdl.compress.pruning.prune import prune_once
from efficientdl.compress.quantization.share import share


class Custom(nn.Module):
    def __init__(self, rows: int, cols: int) -> None:
        super().__init__()
        self.matrix = nn.Parameter(torch.randn(rows, cols))
        self.gain = nn.Parameter(torch.ones(rows))


def _layer(kind: str, a: int, b: int, k: int) -> nn.Module:
    return {
        "linear": lambda: nn.Linear(a, b, bias=k % 2 == 0),
        "conv1d": lambda: nn.Conv1d(a, b, k),
        "conv2d": lambda: nn.Conv2d(2 * a, 2 * b, k, groups=2),
        "depthwise": lambda: nn.Conv2d(a, a, k, groups=a),
        "lstm": lambda: nn.LSTM(a, b, num_layers=1 + k % 2, bidirectional=k > 2),
        "gru": lambda: nn.GRU(a, b),
        "embedding": lambda: nn.Embedding(a + b, k + 1),
        "batchnorm": lambda: nn.BatchNorm1d(a),
        "custom": lambda: Custom(a, b),
    }[kind]()


LAYER = st.tuples(st.sampled_from(["linear", "conv1d", "conv2d", "depthwise", "lstm", "gru", "embedding",
                                   "batchnorm", "custom"]),
                  st.integers(1, 12), st.integers(1, 12), st.integers(1, 3))


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layers=st.lists(LAYER, min_size=1, max_size=4), sparsity=st.floats(0.0, 0.99), bits=st.integers(1, 8),
       index_bits=st.integers(1, 8), coding=st.sampled_from(["huffman", "fixed"]), shared=st.booleans(),
       tie=st.booleans(), seed=st.integers(0, 2**16))
def test_random_models_round_trip_bit_exact(layers, sparsity, bits, index_bits, coding, shared, tie, seed):
    torch.manual_seed(seed)
    model = nn.ModuleList([_layer(*spec) for spec in layers])
    if tie and len(model) > 1 and isinstance(model[0], nn.Linear) and isinstance(model[1], nn.Linear) \
            and model[0].weight.shape == model[1].weight.shape:
        model[1].weight = model[0].weight
    prune_once(model, sparsity=sparsity)
    if shared:
        share(model, bits=bits)
    expected = {t.param_name: t.value.detach().clone() for t in compressible_tensors(model)}
    data, _ = fmt.encode(model, index_bits=index_bits, coding=coding)
    decoded = fmt.decode(data)
    for name, value in expected.items():
        assert torch.equal(decoded.tensors[name], value), name
    fresh = nn.ModuleList([_layer(*spec) for spec in layers])
    if any(r.get("kind") == "alias" for r in decoded.header["tensors"]):
        fresh[1].weight = fresh[0].weight            # the same architecture, tied the same way
    fmt.load_into(fresh, decoded)
    state = fresh.state_dict()
    for name, value in {**expected, **{n: t for n, t in model.state_dict().items()
                                       if "parametrizations" not in n}}.items():
        assert torch.equal(state[name], value), name
