"""The int8 path: kernels against numpy's integer arithmetic, the bound of its rounding, the runtime's choice."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from efficientdl.errors import ModelError
from efficientdl.kernels import cpu
from efficientdl.nn import dispatch, settle, to_runtime
from efficientdl.nn.chain import install


def layer(rows, cols, density=0.2, bits=4, seed=0):
    rng = np.random.default_rng(seed)
    codes = (rng.integers(1, 2 ** bits, (rows, cols)) * (rng.random((rows, cols)) < density)).astype(np.int64)
    codebook = np.concatenate([[0.0], rng.normal(0, 0.05, 2 ** bits - 1)]).astype(np.float32)
    return codes, codebook


def activations(cols, n, density=0.5, seed=1, dtype=np.float32):
    rng = np.random.default_rng(seed)
    x = rng.random((cols, n)) * (rng.random((cols, n)) < density) - 0.2 * (rng.random((cols, n)) < 0.1)
    return np.ascontiguousarray(x, dtype)


def int8_reference(codes, codebook, x):
    """numpy, in float64: the int8 weights and per-column int8 activations, multiplied and rescaled."""
    top_w = np.abs(codebook.astype(np.float64)).max()
    qw = np.rint(codebook / (top_w / 127))
    top_x = np.abs(x.astype(np.float64)).max(axis=0)
    qx = np.rint(x / (top_x / 127))
    return (qw[codes] @ qx) * (top_w / 127) * (top_x / 127)


def test_codebook_quantization_by_hand():
    q, scale = cpu.quantize_codebook(np.array([0.0, 0.5, -1.27, 0.254], np.float32))
    assert scale == pytest.approx(0.01)
    assert q.tolist() == [0, 50, -127, 25]
    q, scale = cpu.quantize_codebook(np.zeros(4, np.float32))
    assert scale == 1.0 and q.tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize("rows,cols,density,n", [(300, 784, 0.1, 1), (64, 40, 0.5, 1), (100, 300, 0.2, 1),
                                                 (100, 300, 0.2, 3), (37, 129, 0.3, 64), (1000, 2048, 0.05, 1)])
@pytest.mark.parametrize("twin", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_int8_kernels_equal_integer_arithmetic(rows, cols, density, n, twin, dtype):
    codes, codebook = layer(rows, cols, density)
    m = cpu.pack(codes, codebook)
    t = cpu.pack_rows(codes, codebook) if twin else None
    x = activations(cols, n, dtype=dtype)
    expected = int8_reference(codes, codebook, x)
    got = cpu.matmul_int8(m, x[:, 0].copy() if n == 1 else x, twin=t)
    assert got.dtype == dtype
    got = got.reshape(rows, n)
    tolerance = 1e-5 if dtype == np.float32 else 1e-12
    assert np.abs(got - expected).max() <= tolerance * np.abs(expected).max()


def test_int8_error_within_the_rounding_bound():
    """|y − W x| ≤ Σ_j (|W_rj| s_x/2 + |x_j| s_w/2 + s_w s_x/4) over the nonzero weights of row r."""
    codes, codebook = layer(200, 500, 0.3)
    x = activations(500, 1)[:, 0].copy()
    y = cpu.matvec_int8_function(cpu.pack(codes, codebook), cpu.pack_rows(codes, codebook))(x)
    w = codebook.astype(np.float64)[codes]
    s_w, s_x = np.abs(codebook).max() / 127, np.abs(x).max() / 127
    bound = (np.abs(w) * s_x / 2 + (codes != 0) * (np.abs(x) * s_w / 2 + s_w * s_x / 4)).sum(axis=1)
    error = np.abs(y - w @ x)
    assert np.all(error <= bound * (1 + 1e-6) + 1e-9)
    assert error.max() > 0                       # it does round


def test_int8_kernels_refuse_what_they_cannot_sum():
    codes, codebook = layer(8, 16)
    twin = cpu.pack_rows(codes, codebook)
    lookup = cpu.PackedMatrix(twin.shape, twin.row_start, twin.colptr, twin.entries, twin.code_bits,
                              twin.codebook, absolute=True)
    with pytest.raises(ValueError, match="lookup twin"):
        cpu.matvec_int8_function(lookup)
    wide = cpu.PackedMatrix((1, cpu.INT8_MAX_COLUMNS + 1), np.array([0, 1]), np.zeros((1, 2), np.int32),
                            np.zeros(0, np.uint8), 4, codebook)
    with pytest.raises(ValueError, match="int32"):
        cpu.matmul_int8(wide, np.zeros(cpu.INT8_MAX_COLUMNS + 1, np.float32))
    with pytest.raises(ValueError, match="shape"):
        cpu.matmul_int8(cpu.pack(codes, codebook), np.zeros(15, np.float32))


def runtime_linear(precision="int8", prefer="speed", rows=120, cols=300, density=0.2):
    codes, codebook = layer(rows, cols, density)
    model = nn.Sequential(nn.Linear(cols, rows), nn.ReLU(), nn.Linear(rows, 10))
    codes2, codebook2 = layer(10, rows, 0.5, seed=3)
    with torch.no_grad():
        model[0].weight.copy_(torch.from_numpy(codebook[codes]))
        model[2].weight.copy_(torch.from_numpy(codebook2[codes2]))
    books = {"0.weight": (codes, codebook), "2.weight": (codes2, codebook2)}
    dense = copy.deepcopy(model).eval()
    fast = to_runtime(model, books, prefer=prefer, cache=False, settle_on_first_call=False, precision=precision)
    return fast, dense, codes, codebook


@pytest.mark.parametrize("batch", [1, 4])
def test_forced_int8_sparse_equals_integer_arithmetic(batch):
    fast, dense, codes, codebook = runtime_linear()
    fast.edl_runtime.force({"0.weight": "int8-sparse"})
    x = torch.rand(batch, 300)
    with torch.no_grad():
        y = fast[0](x)
    expected = int8_reference(codes, codebook, x.double().numpy().T).T + dense[0].bias.detach().double().numpy()
    assert np.abs(y.double().numpy() - expected).max() <= 1e-5 * np.abs(expected).max()
    (errors,) = fast.edl_runtime.weights["0.weight"].errors.values()
    with torch.no_grad():
        exact = dense[0](x)
    assert errors["int8-sparse"] == pytest.approx(float((y - exact).abs().max() / exact.abs().max()), rel=1e-3)


def test_int8_dense_is_torchs_quantized_linear_within_its_rounding():
    pytest.importorskip("torch.ao.quantization")
    fast, dense, _, _ = runtime_linear()
    w = fast.edl_runtime.weights["0.weight"]
    x = torch.rand(8, 300)
    assert "int8-dense" in [r.name for r in w.dispatcher.candidates(dispatch.Call("linear", w, x, columns=8))]
    fast.edl_runtime.force({"0.weight": "int8-dense"})
    with torch.no_grad():
        y, exact = fast[0](x), dense[0](x)
    assert float((y - exact).abs().max() / exact.abs().max()) < 0.03
    assert w.decoded_bytes() == 120 * 300        # the int8 weight, one byte each, counted


def test_precision_decides_the_candidates():
    x = torch.rand(1, 300)
    for precision, prefer, expected in [("fp32", "speed", {"dense", "sparse"}),
                                        ("int8", "memory", {"sparse", "int8-sparse"}),
                                        ("int8", "speed", {"dense", "sparse", "int8-sparse", "int8-dense"})]:
        fast, _, _, _ = runtime_linear(precision, prefer)
        w = fast.edl_runtime.weights["0.weight"]
        names = {r.name for r in w.dispatcher.candidates(dispatch.Call("linear", w, x, columns=1))}
        if precision == "int8" and prefer == "speed" and "int8-dense" not in names:
            expected = expected - {"int8-dense"}  # a torch build without its quantized engine
        assert names == expected, (precision, prefer)
        assert fast.edl_runtime.to_dict()["precision"] == precision
    fast, _, _, _ = runtime_linear("int8")
    w = fast.edl_runtime.weights["0.weight"]
    x64 = torch.rand(1, 300, dtype=torch.float64)     # float64 products stay exact
    assert not any(r.approximate for r in w.dispatcher.candidates(dispatch.Call("linear", w, x64, columns=1)))
    with pytest.raises(ModelError, match="precision must be one of fp32, int8"):
        runtime_linear("int4")


def test_settle_with_int8_reports_every_error_and_chains_skip_int8_layers():
    fast, dense, _, _ = runtime_linear("int8")
    x = torch.rand(1, 300)
    with torch.no_grad():
        settle(fast, x)
        y, exact = fast(x), dense(x)
    for layer in fast.edl_runtime.layers():
        for choice in layer["choices"].values():
            assert set(choice["errors"]) <= {"int8-sparse", "int8-dense"} and choice["errors"]
            assert all(0 <= e < 0.05 for e in choice["errors"].values())
    assert float((y - exact).abs().max() / exact.abs().max()) < 0.05
    # a layer the dispatcher gave an int8 kernel keeps it: it does not join an exact chain
    fast.edl_runtime.force({"0.weight": "int8-sparse", "2.weight": "int8-sparse"})
    with torch.no_grad():
        fast(x)
    assert install(fast).chains == []
