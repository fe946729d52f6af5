"""Calibration statistics of recurrent gate matrices and attention projections (post-training pruning).

Every Gram matrix is checked against an independent computation: the recurrences
written out with their gate equations (LSTM, GRU, RNN) from the module's weights, and
attention written out head by head (projections, scaled dot products, softmax, the
concatenated heads) from the module's ``in_proj``.  The hand-written versions are first
checked against the modules' own outputs, so they are the computations the fused
kernels perform.
"""

import copy
import math

import pytest
import torch
from torch import nn

from efficientdl import models
from efficientdl.compress.calibration import collect_statistics, is_covered
from efficientdl.compress.pruning import prune_post_training, weight_mask
from efficientdl.core.tensors import compressible_tensors
from efficientdl.errors import RecipeError
from efficientdl.models.rnn import LSTMClassifier

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- recurrences by hand
def _cell(kind, W_ih, W_hh, b_ih, b_hh, x, h, c, nonlinearity="tanh"):
    """One step of PyTorch's LSTM (gates i, f, g, o), GRU (r, z, n) or Elman RNN; returns (h, c)."""
    gi, gh = x @ W_ih.T + b_ih, h @ W_hh.T + b_hh
    if kind == "LSTM":
        i, f, g, o = (gi + gh).chunk(4, dim=-1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        c = f * c + i * g
        return o * torch.tanh(c), c
    if kind == "GRU":
        ir, iz, in_ = gi.chunk(3, dim=-1)
        hr, hz, hn = gh.chunk(3, dim=-1)
        r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
        n = torch.tanh(in_ + r * hn)
        return (1 - z) * n + z * h, c
    pre = gi + gh
    return (torch.tanh(pre) if nonlinearity == "tanh" else torch.relu(pre)), c


def _recurrence_by_hand(rnn, x, hx=None):
    """Inputs of every gate matrix, by running the recurrence step by step.

    Returns ``(output, rows)``: the top layer's output (time-major ``[T, B, D·H]``) and
    ``{attr: [n, d]}`` — for ``weight_ih_l{k}[_reverse]`` every ``x_t`` of layer ``k``,
    for ``weight_hh_l{k}[_reverse]`` every ``h_{t−1}`` the step multiplied.
    """
    kind = type(rnn).__name__
    D, H, L = (2 if rnn.bidirectional else 1), rnn.hidden_size, rnn.num_layers
    unbatched = x.dim() == 2
    if unbatched:
        x = x.unsqueeze(1)
    elif rnn.batch_first:
        x = x.transpose(0, 1)
    T, B = x.shape[:2]
    if hx is None:
        h0 = c0 = torch.zeros(L * D, B, H, dtype=x.dtype)
    else:
        h0, c0 = hx if kind == "LSTM" else (hx, torch.zeros_like(hx))
        if unbatched:
            h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
    rows = {}
    layer_input = x
    for k in range(L):
        outputs = []
        for d, suffix in enumerate(["", "_reverse"][:D]):
            p = {n: getattr(rnn, f"{n}_l{k}{suffix}").detach() for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
            h, c = h0[k * D + d], c0[k * D + d]
            steps = range(T) if d == 0 else range(T - 1, -1, -1)
            ys, previous = [None] * T, []
            for t in steps:
                previous.append(h)
                h, c = _cell(kind, p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"], layer_input[t], h, c,
                             getattr(rnn, "nonlinearity", "tanh"))
                ys[t] = h
            rows[f"weight_ih_l{k}{suffix}"] = layer_input.reshape(-1, layer_input.shape[-1])
            rows[f"weight_hh_l{k}{suffix}"] = torch.stack(previous).reshape(-1, H)
            outputs.append(torch.stack(ys))
        layer_input = torch.cat(outputs, dim=-1)
    return layer_input, rows


class Wrap(nn.Module):
    """Calls the recurrent module with an optional fixed initial state."""

    def __init__(self, rnn, hx=None):
        super().__init__()
        self.rnn, self.hx = rnn, hx

    def forward(self, x):
        return self.rnn(x) if self.hx is None else self.rnn(x, self.hx)


def _check_grams(rnn, batches, hx=None):
    stats = collect_statistics(Wrap(rnn, hx), batches)
    expected = {}
    for x in batches:
        output, rows = _recurrence_by_hand(rnn, x, hx)
        reference = rnn(x, hx)[0] if hx is not None else rnn(x)[0]
        if x.dim() == 3 and rnn.batch_first:
            reference = reference.transpose(0, 1)
        torch.testing.assert_close(output.reshape(reference.shape), reference)  # the loop is the module
        for attr, X in rows.items():
            G = X.T @ X
            expected[attr] = expected.get(attr, 0) + G
    gate_keys = {t.key for t in compressible_tensors(Wrap(rnn)) if "weight_" in t.key}
    assert set(stats) == gate_keys
    for attr, G in expected.items():
        s = stats[f"rnn.{attr}"]
        torch.testing.assert_close(s.gram, G, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(s.sq_norms, torch.diagonal(G), rtol=1e-10, atol=1e-10)
        assert s.groups == 1
        assert s.count == sum(x.shape[0] * (x.shape[1] if x.dim() == 3 else 1) for x in batches)
    return stats


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("with_state", [False, True])
def test_lstm_grams_equal_the_hand_written_recurrence(batch_first, with_state):
    torch.manual_seed(0)
    lstm = nn.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=batch_first).double()
    shape = (2, 5, 3) if batch_first else (5, 2, 3)
    batches = [torch.randn(*shape, dtype=torch.float64) for _ in range(2)]
    hx = (torch.randn(4, 2, 4, dtype=torch.float64), torch.randn(4, 2, 4, dtype=torch.float64)) if with_state else None
    stats = _check_grams(lstm, batches, hx)
    assert stats["rnn.weight_ih_l1"].gram.shape == (8, 8)          # both directions of layer 0
    assert stats["rnn.weight_hh_l1_reverse"].gram.shape == (4, 4)
    assert list(stats)[:2] == ["rnn.weight_ih_l0", "rnn.weight_hh_l0"]   # execution order


def test_lstm_unbatched_input():
    torch.manual_seed(1)
    lstm = nn.LSTM(3, 4, num_layers=2).double()
    hx = (torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64))
    _check_grams(lstm, [torch.randn(6, 3, dtype=torch.float64)], hx)


def test_gru_grams_equal_the_hand_written_recurrence():
    torch.manual_seed(2)
    gru = nn.GRU(3, 5, num_layers=2, bidirectional=True, batch_first=True).double()
    _check_grams(gru, [torch.randn(3, 4, 3, dtype=torch.float64)], torch.randn(4, 3, 5, dtype=torch.float64))


def test_rnn_grams_equal_the_hand_written_recurrence():
    torch.manual_seed(3)
    rnn = nn.RNN(3, 5, num_layers=2, nonlinearity="relu").double()
    _check_grams(rnn, [torch.randn(4, 2, 3, dtype=torch.float64)])


def test_packed_sequences_and_projections_are_refused():
    lstm = nn.LSTM(3, 4)

    class Packed(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = lstm

        def forward(self, x):
            return self.lstm(nn.utils.rnn.pack_padded_sequence(x, [4, 2]))

    with pytest.raises(RecipeError, match="PackedSequence is not covered"):
        collect_statistics(Packed(), [torch.randn(4, 2, 3)])
    projected = nn.LSTM(3, 4, proj_size=2)
    tensors = list(compressible_tensors(projected))
    assert tensors and not any(is_covered(t) for t in tensors)
    with pytest.raises(RecipeError, match="'weight_ih_l0' .* not covered"):
        collect_statistics(projected, [torch.randn(4, 2, 3)], keys=["weight_ih_l0"])


# --------------------------------------------------------------------------- attention by hand
def _attention_by_hand(mha, query, key, value, attn_mask=None, key_padding_mask=None):
    """The concatenated heads (what out_proj multiplies), batch-major ``[B, L, E]``, and the output.

    Boolean masks: ``True`` = not allowed to attend.
    """
    if not mha.batch_first:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    E, h = mha.embed_dim, mha.num_heads
    dh = E // h
    W_q, W_k, W_v = mha.in_proj_weight.detach().chunk(3)
    b_q, b_k, b_v = mha.in_proj_bias.detach().chunk(3)
    B, Lq, Lk = query.shape[0], query.shape[1], key.shape[1]
    Q = (query @ W_q.T + b_q).reshape(B, Lq, h, dh).transpose(1, 2)     # [B, h, Lq, dh]
    K = (key @ W_k.T + b_k).reshape(B, Lk, h, dh).transpose(1, 2)
    V = (value @ W_v.T + b_v).reshape(B, Lk, h, dh).transpose(1, 2)
    scores = Q @ K.transpose(-1, -2) / math.sqrt(dh)
    if attn_mask is not None:
        scores = scores.masked_fill(attn_mask, float("-inf"))
    if key_padding_mask is not None:
        scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    heads = (torch.softmax(scores, dim=-1) @ V).transpose(1, 2).reshape(B, Lq, E)
    out = heads @ mha.out_proj.weight.detach().T + mha.out_proj.bias.detach()
    return heads, (out if mha.batch_first else out.transpose(0, 1))


class Attend(nn.Module):
    def __init__(self, mha, **kwargs):
        super().__init__()
        self.attn, self.kwargs = mha, kwargs

    def forward(self, x):
        q, k, v = x
        return self.attn(q, k, v, **self.kwargs)[0]


def _gram(X):
    X = X.reshape(-1, X.shape[-1])
    return X.T @ X


@pytest.mark.parametrize("batch_first", [False, True])
def test_cross_attention_in_proj_groups_are_the_query_key_value_grams(batch_first):
    torch.manual_seed(4)
    mha = nn.MultiheadAttention(8, 2, batch_first=batch_first).double()
    q = torch.randn(3, 5, 8, dtype=torch.float64)                       # (B, Lq, E)
    k = torch.randn(3, 7, 8, dtype=torch.float64)                       # other length, other values
    v = torch.randn(3, 7, 8, dtype=torch.float64) * 2 + 1
    inputs = (q, k, v) if batch_first else tuple(t.transpose(0, 1) for t in (q, k, v))
    stats = collect_statistics(Attend(mha), [(inputs, None)])  # (x, label): x = (q, k, v)
    s = stats["attn.in_proj_weight"]
    assert s.groups == 3 and s.gram.shape == (3, 8, 8)
    for g, X in enumerate((q, k, v)):
        torch.testing.assert_close(s.gram[g], _gram(X), rtol=1e-12, atol=1e-12)
    assert s.group_counts == (15, 21, 21) and s.count == 15
    torch.testing.assert_close(s.mean[2], v.reshape(-1, 8).mean(0))
    assert s.row_norms(24).shape == (24, 8)
    # out_proj: the concatenated heads of the hand-written attention, which out_proj maps to the output
    heads, out = _attention_by_hand(mha, *inputs)
    torch.testing.assert_close(out, mha(*inputs)[0])
    torch.testing.assert_close(stats["attn.out_proj"].gram, _gram(heads), rtol=1e-10, atol=1e-10)
    assert stats["attn.out_proj"].count == 15
    assert list(stats) == ["attn.in_proj_weight", "attn.out_proj"]


@pytest.mark.parametrize("need_weights", [False, True])
def test_self_attention_with_masks_out_proj_gram_equals_the_hand_written_heads(need_weights):
    torch.manual_seed(5)
    mha = nn.MultiheadAttention(8, 4, batch_first=True).double()
    x = torch.randn(2, 6, 8, dtype=torch.float64)
    causal = torch.triu(torch.ones(6, 6, dtype=torch.bool), diagonal=1)
    padding = torch.zeros(2, 6, dtype=torch.bool)
    padding[1, 4:] = True

    class Self(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = mha

        def forward(self, x):
            return self.attn(x, x, x, attn_mask=causal, key_padding_mask=padding, need_weights=need_weights)[0]

    stats = collect_statistics(Self(), [x])
    heads, out = _attention_by_hand(mha, x, x, x, attn_mask=causal, key_padding_mask=padding)
    torch.testing.assert_close(out, mha(x, x, x, attn_mask=causal, key_padding_mask=padding)[0])
    torch.testing.assert_close(stats["attn.out_proj"].gram, _gram(heads), rtol=1e-10, atol=1e-10)
    s = stats["attn.in_proj_weight"]
    for g in range(3):                                                  # the same Gram three times
        torch.testing.assert_close(s.gram[g], _gram(x), rtol=1e-12, atol=1e-12)
    assert s.group_counts == (12, 12, 12)


def test_separate_projections_with_kdim_vdim():
    torch.manual_seed(6)
    mha = nn.MultiheadAttention(8, 2, kdim=5, vdim=3, batch_first=True).double()
    q = torch.randn(2, 4, 8, dtype=torch.float64)
    k = torch.randn(2, 6, 5, dtype=torch.float64)
    v = torch.randn(2, 6, 3, dtype=torch.float64)
    stats = collect_statistics(Attend(mha), [((q, k, v), None)])
    assert set(stats) == {"attn.q_proj_weight", "attn.k_proj_weight", "attn.v_proj_weight", "attn.out_proj"}
    for name, X in (("q", q), ("k", k), ("v", v)):
        torch.testing.assert_close(stats[f"attn.{name}_proj_weight"].gram, _gram(X), rtol=1e-12, atol=1e-12)
    # the heads by hand with the separate projections
    E, h, dh = 8, 2, 4
    b_q, b_k, b_v = mha.in_proj_bias.detach().chunk(3)
    Q = (q @ mha.q_proj_weight.detach().T + b_q).reshape(2, 4, h, dh).transpose(1, 2)
    K = (k @ mha.k_proj_weight.detach().T + b_k).reshape(2, 6, h, dh).transpose(1, 2)
    V = (v @ mha.v_proj_weight.detach().T + b_v).reshape(2, 6, h, dh).transpose(1, 2)
    heads = (torch.softmax(Q @ K.transpose(-1, -2) / math.sqrt(dh), -1) @ V).transpose(1, 2).reshape(2, 4, E)
    torch.testing.assert_close(mha.out_proj(heads), mha(q, k, v)[0])
    torch.testing.assert_close(stats["attn.out_proj"].gram, _gram(heads), rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------- OBS ≤ magnitude
def _relative_error(W, W_hat, grams):
    """‖(W − Ŵ) X‖_F / ‖W X‖_F from the hand-computed Gram of each row block."""
    per = W.shape[0] // len(grams)
    num = den = 0.0
    for g, G in enumerate(grams):
        w, dw = W[g * per:(g + 1) * per].double(), (W - W_hat)[g * per:(g + 1) * per].double()
        num += float(((dw @ G) * dw).sum())
        den += float(((w @ G) * w).sum())
    return math.sqrt(num / den)


def _mixed(seed, *shape):
    """Correlated features: a few latent factors mixed into the last dimension."""
    g = torch.Generator().manual_seed(seed)
    Z = torch.randn(*shape[:-1], 3, generator=g)
    return Z @ torch.randn(3, shape[-1], generator=g) + 0.1 * torch.randn(*shape, generator=g)


class RecurrentAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(12, 16, num_layers=2, batch_first=True)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        h, _ = self.lstm(x)
        h, _ = self.attn(h, h, h, need_weights=False)
        return self.fc(h)


def test_obs_error_le_magnitude_for_gates_and_attention_projections():
    torch.manual_seed(7)
    net = RecurrentAttention()
    batches = [_mixed(s, 4, 10, 12) for s in range(3)]
    # the inputs of each tensor on the dense model, by hand
    grams = {}
    for x in batches:
        top, rows = _recurrence_by_hand(net.lstm, x)
        for attr, X in rows.items():
            grams.setdefault(f"lstm.{attr}", [0])[0] += X.double().T @ X.double()
        h = top.transpose(0, 1)
        heads, _ = _attention_by_hand(net.attn, h, h, h)
        grams.setdefault("attn.in_proj_weight", [0, 0, 0])
        grams["attn.in_proj_weight"] = [G + _gram(h.double()) for G in grams["attn.in_proj_weight"]]
        grams.setdefault("attn.out_proj", [0])[0] += _gram(heads.double())
    reports, pruned = {}, {}
    for method in ("obs", "magnitude"):
        pruned[method] = copy.deepcopy(net)
        _, reports[method] = prune_post_training(pruned[method], batches, sparsity=0.5, method=method)
    for key, G in grams.items():
        errors = {}
        for method in ("obs", "magnitude"):
            tensor = next(t for t in compressible_tensors(pruned[method]) if t.key == key)
            original = next(t for t in compressible_tensors(net) if t.key == key).value.detach()
            errors[method] = _relative_error(original, tensor.value.detach(), G)
            assert reports[method].settings["reconstruction_error"][key] == pytest.approx(errors[method], rel=1e-4)
            assert reports[method].settings["sparsity"][key] == pytest.approx(0.5)
        assert errors["obs"] <= errors["magnitude"], key
    assert reports["obs"].settings["not_covered"] == []


# --------------------------------------------------------------------------- end to end
def _dense_lstm_like(lstm):
    dense = nn.LSTM(lstm.input_size, lstm.hidden_size, num_layers=lstm.num_layers, batch_first=lstm.batch_first)
    dense.load_state_dict({name: getattr(lstm, name).detach().clone() for name in dense.state_dict()})
    return dense


@pytest.mark.parametrize("method", ["obs", "wanda", "magnitude"])
@pytest.mark.parametrize("sequential", [False, True])
def test_lstm_classifier_gates_are_pruned_and_the_masks_act(method, sequential):
    torch.manual_seed(8)
    net = LSTMClassifier(num_layers=2, hidden_size=32)
    data = [(torch.rand(8, 1, 28, 28), torch.zeros(8)) for _ in range(2)]
    x = data[0][0]
    sequence = x.permute(0, 2, 1, 3).reshape(8, 28, 28)
    with torch.no_grad():
        before = net.lstm(sequence)[0]
    model = copy.deepcopy(net)
    _, report = prune_post_training(model, data, sparsity=0.5, method=method, sequential=sequential)
    gates = [f"lstm.weight_{kind}_l{k}" for k in range(2) for kind in ("ih", "hh")]
    assert not set(gates) & set(report.settings["not_covered"])
    for key in gates:
        attr = key.split(".")[1]
        assert report.settings["sparsity"][key] == pytest.approx(0.5)
        assert weight_mask(model.lstm, attr) is not None
        assert float((getattr(model.lstm, attr) == 0).float().mean()) == pytest.approx(0.5)
    with torch.no_grad():
        after = model.lstm(sequence)[0]
        dense = _dense_lstm_like(model.lstm)(sequence)[0]
    assert (after - before).abs().max() > 1e-3                          # the masks take effect in forward
    torch.testing.assert_close(after, dense)                            # exactly as a dense LSTM of the masked weights
    assert model(x).shape == (8, 10)


@pytest.mark.parametrize("sequential", [False, True])
def test_vit_attention_projections_are_pruned(sequential):
    torch.manual_seed(9)
    vit = models.create("vit")
    data = [torch.randn(8, 1, 28, 28)]
    _, report = prune_post_training(vit, data, sparsity=0.5, method="obs", sequential=sequential)
    projections = [f"blocks.{i}.attn.{name}" for i in range(6) for name in ("in_proj_weight", "out_proj")]
    assert not set(projections) & set(report.settings["not_covered"])
    assert set(report.settings["not_covered"]) == {"cls_token", "pos_embed"}
    for key in projections:
        assert report.settings["sparsity"][key] == pytest.approx(0.5)
    attn = vit.blocks[0].attn
    assert weight_mask(attn, "in_proj_weight") is not None and weight_mask(attn.out_proj) is not None
    # the masks act in the attention's forward: it equals a dense attention holding the masked weights
    dense = nn.MultiheadAttention(64, 4, batch_first=True)
    dense.load_state_dict({"in_proj_weight": attn.in_proj_weight.detach(), "in_proj_bias": attn.in_proj_bias.detach(),
                           "out_proj.weight": attn.out_proj.weight.detach(),
                           "out_proj.bias": attn.out_proj.bias.detach()})
    h = torch.randn(2, 17, 64)
    with torch.no_grad():
        torch.testing.assert_close(attn(h, h, h, need_weights=False)[0], dense(h, h, h, need_weights=False)[0])
        assert float((attn.in_proj_weight == 0).float().mean()) == pytest.approx(0.5)
        assert vit(data[0]).shape == (8, 10)


def test_transformer_encoder_layer_is_calibrated_despite_its_fast_path():
    from efficientdl.compress.calibration import collect_statistics

    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True, dropout=0.0).eval()
    x = torch.randn(3, 5, 16)
    stats = collect_statistics(layer, [x])
    assert {"self_attn.in_proj_weight", "self_attn.out_proj", "linear1", "linear2"} <= set(stats)
    # linear1 sees the attention block's normalized output: 15 positions
    assert stats["linear1"].count == 15
    assert torch.backends.mha.get_fastpath_enabled()        # restored
