"""Chains of compressed linear layers in one compiled call: the kernel against numpy's dense
math on the decoded weights, the fx rewrite against the dense model, and every case that
must run unfused."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from efficientdl.kernels import cpu
from efficientdl.nn import CompressedWeight, chain, settle, to_runtime
from efficientdl.nn import dispatch, weights

from test_weights import compress

ACTIVATIONS_NUMPY = {"identity": lambda y: y, "relu": lambda y: np.maximum(y, 0), "relu6": lambda y: np.clip(y, 0, 6),
                     "tanh": np.tanh, "sigmoid": lambda y: 1 / (1 + np.exp(-y))}


def random_layer(rng, rows, cols, density=0.3, bits=4):
    codes = rng.integers(1, 2 ** bits, size=(rows, cols)) * (rng.random((rows, cols)) < density)
    book = np.concatenate([[0.0], rng.standard_normal(2 ** bits - 1)]).astype(np.float32)
    return codes, book, book[codes].astype(np.float64)


@pytest.mark.parametrize("twin", [True, False])
@pytest.mark.parametrize("zeros", [0.0, 0.7])            # dense input (row kernel) / sparse input (column kernel)
def test_chain_kernel_equals_dense_math(twin, zeros):
    rng = np.random.default_rng(1)
    sizes = [37, 50, 29, 64, 5, 11]
    kinds = list(ACTIVATIONS_NUMPY)
    layers, dense = [], []
    for i, (cols, rows) in enumerate(zip(sizes, sizes[1:])):
        codes, book, w = random_layer(rng, rows, cols)
        bias = None if i == 2 else rng.standard_normal(rows).astype(np.float32)
        kind = kinds[i % len(kinds)]
        layers.append((cpu.pack(codes, book), cpu.pack_rows(codes, book) if twin else None, bias, kind))
        dense.append((w, bias, kind))
    x = rng.standard_normal(sizes[0]).astype(np.float32) * (rng.random(sizes[0]) >= zeros)
    y = cpu.chain_function(layers)(x)
    ref = x.astype(np.float64)
    for w, bias, kind in dense:
        ref = ACTIVATIONS_NUMPY[kind](w @ ref + (0 if bias is None else bias))
    assert y.dtype == np.float32 and y.shape == (11,)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)


def test_chain_kernel_rejects_what_does_not_chain():
    rng = np.random.default_rng(0)
    a, book, _ = random_layer(rng, 6, 4)
    b, _, _ = random_layer(rng, 3, 5)
    ma, mb = cpu.pack(a, book), cpu.pack(b, book)
    with pytest.raises(ValueError, match="5 inputs after 6 outputs"):
        cpu.chain_function([(ma, None, None, "relu"), (mb, None, None, "identity")])
    with pytest.raises(ValueError, match="activation 'gelu'"):
        cpu.chain_function([(ma, None, None, "gelu")])
    with pytest.raises(ValueError, match="bias of shape"):
        cpu.chain_function([(ma, None, np.zeros(5, np.float32), "relu")])
    with pytest.raises(ValueError, match="at least one layer"):
        cpu.chain_function([])


class FunctionalMLP(nn.Module):
    """A user's module: its own parameters through F.linear, activations as functions and methods."""

    def __init__(self):
        super().__init__()
        self.w1, self.b1 = nn.Parameter(torch.randn(24, 16)), nn.Parameter(torch.randn(24))
        self.w2, self.b2 = nn.Parameter(torch.randn(12, 24)), nn.Parameter(torch.randn(12))
        self.w3 = nn.Parameter(torch.randn(6, 12))

    def forward(self, x):
        h = torch.relu(F.linear(x, self.w1, self.b1))
        h = F.linear(h, self.w2, self.b2).tanh()
        return torch.sigmoid(F.linear(h, self.w3))


def sequential_mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 20),
                         nn.ReLU6(), nn.Linear(20, 3))


@pytest.mark.parametrize("build", [sequential_mlp, FunctionalMLP])
def test_installed_chain_equals_the_dense_model(build):
    torch.manual_seed(0)
    model, reference = compress(build(), prefer="memory")
    report = chain.install(model)
    assert len(report.chains) == 1 and len(report.chains[0].layers) == 3
    c = report.chains[0]
    for shape in [(1, 16), (1, 2, 8), (1, 1, 4, 4)] if build is sequential_mlp else [(1, 16), (16,), (1, 1, 16)]:
        x = torch.randn(shape)
        with torch.no_grad():
            torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-5)
    assert c.fused_calls == 3 and c.unfused_calls == 0
    x = torch.randn(5, 16)                      # more than one sample: the steps one by one, still exact
    with torch.inference_mode():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-5)
    assert c.unfused_calls == 1
    torch.testing.assert_close(model(x.double()), reference.double()(x.double()), rtol=1e-6, atol=1e-7)
    assert c.unfused_calls == 2


def test_what_must_not_be_fused_runs_the_steps():
    torch.manual_seed(0)
    model, reference = compress(sequential_mlp(), prefer="memory")
    c = chain.install(model).chains[0]
    x = torch.randn(1, 16)
    seen = []
    handle = model[1].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-5)
    assert seen == [torch.Size([1, 32])] and c.unfused_calls == 1      # the user's hook ran
    handle.remove()
    model[4].weight = nn.Parameter(model[4].weight.dense().clone(), requires_grad=False)   # made dense again
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-5)
    assert c.unfused_calls == 2 and c.fused_calls == 0
    model2, reference2 = compress(sequential_mlp(), prefer="memory")
    c2 = chain.install(model2).chains[0]
    model2[3].train()                             # dropout in training mode is not the identity
    with torch.no_grad():
        model2(x)
    assert c2.unfused_calls == 1 and c2.fused_calls == 0


def test_no_chain_across_a_value_with_two_users_or_an_untraceable_model():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            h = self.a(x)
            return self.b(h) + h                  # h has two users: a and b cannot fuse

    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            return self.b(self.a(x)) if x.sum() > 0 else x

    torch.manual_seed(0)
    model, _ = compress(Residual(), prefer="memory")
    assert chain.install(model).reason == "no run of two or more compressed linear layers"
    assert chain.installed(model) is None and "forward" not in model.__dict__
    model, reference = compress(DataDependent(), prefer="memory")
    report = chain.install(model)
    assert not report.chains and report.reason.startswith("the model's forward cannot be traced by torch.fx")
    x = torch.randn(1, 8).abs()
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-5)


def test_uninstall_deepcopy_and_state_dict_stay_the_users():
    torch.manual_seed(0)
    model, reference = compress(sequential_mlp(), prefer="memory")
    keys = list(model.state_dict())
    chain.install(model)
    assert list(model.state_dict()) == keys and chain.installed(model) is not None
    twin = copy.deepcopy(model)
    x = torch.randn(1, 16)
    with torch.no_grad():
        model[1].bias += 1.0                      # the original changes: its copy computes from its own bias
        torch.testing.assert_close(twin(x), reference(x), rtol=1e-4, atol=1e-5)
        reference[1].bias += 1.0
        torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-5)
    assert installed_chain(twin).fused_calls == 1 and installed_chain(model).fused_calls == 1
    model.train()                                 # training mode: the class's own forward, as written
    assert model(x).shape == (1, 3) and installed_chain(model).fused_calls == 1
    model.eval()
    chain.uninstall(model)
    assert chain.installed(model) is None and "forward" not in model.__dict__
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-5)


def installed_chain(model):
    (c,) = chain.installed(model).chains
    return c


def test_settle_compiles_chains_and_drops_them_when_dense_wins(monkeypatch):
    torch.manual_seed(0)
    model, reference = compress(sequential_mlp(), prefer="memory")
    x = torch.randn(1, 16)
    result = settle(model, x)
    assert result["chains"]["chains"][0]["layers"] == ["1.weight", "4.weight", "6.weight"]
    assert result["chains"]["chains"][0]["activations"] == ["relu", "relu6", "identity"]
    assert model.edl_runtime.to_dict()["chains"] == result["chains"]
    fused = installed_chain(model).fused_calls
    with torch.no_grad():                         # settle swapped the parameters back and forth: still fused
        torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-5)
    assert installed_chain(model).fused_calls == fused + 1
    model, reference = compress(sequential_mlp(), prefer="speed")
    model.edl_runtime.force("sparse")             # every layer compressed, then dense wins end to end
    timings = iter([100.0, 50.0] * 100)
    monkeypatch.setattr(weights, "_median_model_us", lambda *a: next(timings))
    result = settle(model, x)
    assert result["decision"] == "dense" and not result["chains"]["chains"]
    assert chain.installed(model) is None and not any(isinstance(p, CompressedWeight) for p in model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-5)


def test_settle_on_an_installed_model_starts_from_its_own_forward():
    torch.manual_seed(0)
    model, reference = to_runtime_mlp()
    x = torch.randn(1, 16)
    settle(model, x)
    settle(model, x)                              # again: one chain, not a chain of the traced module
    assert len(model.edl_runtime.chains.chains) == 1
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-5)


def to_runtime_mlp():
    model = sequential_mlp()
    books = {}
    rng = np.random.default_rng(3)
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            codes, book, w = random_layer(rng, *p.shape)
            with torch.no_grad():
                p.copy_(torch.from_numpy(w))
            books[name] = (codes, book)
    reference = copy.deepcopy(model).eval()
    return to_runtime(model, books, prefer="memory", cache=False), reference


@pytest.mark.parametrize("chained_faster", [True, False])
def test_speed_settle_keeps_a_chain_compressed_when_it_beats_the_per_layer_choice(monkeypatch, chained_faster):
    """Every layer measured dense on its own: the chained candidate is timed against it end to end."""
    torch.manual_seed(0)
    model, reference = compress(sequential_mlp(), prefer="speed")
    names = list(model.edl_runtime.compressed)

    def timer(m, args, rounds):
        fused = chain.installed(m) is not None and bool(chain.installed(m).chains)
        return 10.0 if fused == chained_faster else 100.0

    monkeypatch.setattr(weights, "_median_model_us", timer)
    x = torch.randn(1, 16)
    with torch.no_grad():
        made_dense = weights._per_layer_or_chained(model, model.edl_runtime, (x,), names, names, 3)
    assert made_dense == ([] if chained_faster else names)
    assert chain.installed(model) is None                 # settle installs the winner's chains afterwards
    held = [isinstance(model.get_submodule(n.rpartition(".")[0]).weight, CompressedWeight) for n in names]
    assert held == [chained_faster] * 3
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-5)



def test_a_forced_kernel_is_honoured_not_fused():
    torch.manual_seed(0)
    model, reference = compress(sequential_mlp(), prefer="memory")
    c = chain.install(model).chains[0]
    x = torch.randn(1, 16)
    name = c.layers[1]
    model.edl_runtime.force({name: "sparse"})
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-5)
    assert c.fused_calls == 0 and c.unfused_calls == 1
    chosen = model.edl_runtime.weights[name].chosen
    assert chosen and all(r.name == "sparse" for r in chosen.values())   # the forced kernel ran
    assert chain.install(model).reason == "no run of two or more compressed linear layers" or \
        all(name not in ch.layers for ch in chain.installed(model).chains)
    model.edl_runtime.force({name: None})         # measured again: it may chain again
    assert [ch.layers for ch in chain.install(model).chains] == [c.layers]



def test_settle_keeps_no_decoded_copy_a_chain_computes_for_it(monkeypatch):
    torch.manual_seed(0)
    model, reference = compress(sequential_mlp())                # prefer="speed"
    x = torch.randn(1, 16)
    dense_row = next(r for r in dispatch.KERNELS if r.op == "linear" and r.name == "dense")
    for w in model.edl_runtime.weights.values():                 # batch-1 choices that decode
        w._payload.chosen[dispatch.shape_class(dispatch.Call("linear", w, torch.randn(1, w.shape[1]),
                                                             columns=1))] = dense_row
    with torch.no_grad():
        model(x)
    assert all(w.decoded_bytes() > 0 for w in model.edl_runtime.weights.values())
    # timed with chains installed (the traced forward), the model is always the faster
    monkeypatch.setattr(weights, "_median_model_us", lambda m, *a: 50.0 if "forward" in m.__dict__ else 100.0)
    result = settle(model, x)
    assert result["decision"] == "compressed" and result["chains"]["chains"]
    chained = result["chains"]["chains"][0]["layers"]
    assert len(chained) == 3
    for n in chained:                            # computed by the chain from the packed form
        assert model.edl_runtime.weights[n].decoded_bytes() == 0
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-5)
