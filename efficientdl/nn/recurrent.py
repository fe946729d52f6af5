"""``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` served from compressed gate matrices.

The modules call ``torch.lstm`` / ``torch.gru`` / ``torch.rnn_tanh`` / ``torch.rnn_relu``
with their flat weight list; when a compressed weight is in it, the call lands here.
Per layer and direction (Han et al. ESE, FPGA'17, and EIE's NT-LSTM benchmark):

1. the input terms of all ``T`` time steps, ``X W_ihᵀ + b_ih`` with ``X`` of shape
   ``(T·B, in)``, are one product — served like ``F.linear`` (the sparse × dense kernel
   over ``T·B`` columns, or dense, as the dispatcher measured);
2. the recurrence ``h W_hhᵀ`` runs step by step in one compiled loop
   (:func:`efficientdl.kernels.recurrent.run_sequence`) on the row-major twin of the
   compressed ``W_hh``, the gates included.

Three rows of the dispatch table serve a layer, chosen by measurement: ``sparse-fused``
(both steps in one compiled call, the input product on ``W_ih``'s row twin:
:func:`efficientdl.kernels.recurrent.run_layer`), ``sparse-loop`` (the input product through
``F.linear``'s own dispatch, then the loop) and ``dense`` (torch's kernel on decoded weights).

A dense ``W_hh`` (not compressed) leaves that layer to torch's own kernel.  Packed
sequences, LSTM projections (``proj_size``) and dropout while training are computed from
the decoded weights, and recorded as fallbacks.
"""

from __future__ import annotations

import weakref

import numpy as np
import torch
import torch.nn.functional as F

from ..kernels.recurrent import run_layer, run_sequence, slice_rows
from .dispatch import Call, KernelRow, register_kernel
from .served import _bias_as, linear
from .weights import CompressedWeight, check_input, fallback, implements

_GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
_FUNCS = {"lstm": torch.lstm, "gru": torch.gru, "rnn_tanh": torch.rnn_tanh, "rnn_relu": torch.rnn_relu}


def _project(x: torch.Tensor, w, b) -> torch.Tensor:
    if isinstance(w, CompressedWeight):
        return linear(x, w, b)
    return F.linear(x, w, b)


def _torch_layer(func, mode, x, w_ih, w_hh, b_ih, b_hh, h, c, reverse: bool, reason: str | None):
    """One layer and direction by torch's own kernel on decoded weights: ``(out, h_T, c_T)``."""
    one = [w_ih, w_hh] + ([b_ih, b_hh] if b_ih is not None else [])
    state = (h[None], c[None]) if mode == "lstm" else h[None]
    args = (x.flip(0) if reverse else x, state, one, b_ih is not None, 1, 0.0, False, False, False)
    if reason is None:                       # the dispatcher's dense kernel: decoded, not a fallback
        with torch._C.DisableTorchFunctionSubclass():
            res = func(*(args[:2] + ([_dense(w, x.dtype) for w in one],) + args[3:]))
    else:
        res = fallback(func, args, {}, reason)
    out = res[0].flip(0) if reverse else res[0]
    return out, res[1][0], (res[2][0] if mode == "lstm" else None)


def _dense(w, dtype):
    return w.dense(dtype) if isinstance(w, CompressedWeight) else w.detach().to(dtype)


#: ``id(bias tensor)`` → (a weak reference to it, its numpy view): made once per tensor, a view
#: of the parameter, so it follows in-place changes.  (Tensors compare element-wise, so they
#: cannot be the keys of a weak dictionary; the reference confirms the id still names it.)
_BIAS_VIEWS: dict[int, tuple[weakref.ref, np.ndarray]] = {}


def _bias_array(b: torch.Tensor | None, dtype: torch.dtype):
    """The bias as a numpy array in ``dtype``: a kept view where the dtypes match, else converted."""
    if b is None:
        return None
    if b.dtype != dtype:
        return _bias_as(b, dtype)[1]
    entry = _BIAS_VIEWS.get(id(b))
    if entry is None or entry[0]() is not b:
        key = id(b)
        entry = _BIAS_VIEWS[key] = (weakref.ref(b, lambda _ref, key=key: _BIAS_VIEWS.pop(key, None)),
                                    _bias_as(b, dtype)[1])
    return entry[1]


def _slices(w: CompressedWeight):
    """``W_hh``'s lookup twin as row slices (:func:`~efficientdl.kernels.recurrent.slice_rows`), made
    once and kept on the weight (its bytes counted with the kernels' extra forms); ``None`` with a
    relative twin, or with ``prefer="memory"`` (no second copy of the entries)."""
    if not w.twin.absolute or w.dispatcher.prefer == "memory":
        return None
    held = w._payload.derived.get("slices")
    if held is None:
        slices = slice_rows(w.twin)
        held = w._payload.derived["slices"] = (slices, sum(a.nbytes for a in slices))
    return held[0]


def _recurrent_sparse(call: Call):
    """The input product for all steps, then the compiled recurrence on ``W_hh``'s row twin.

    The state is copied in numpy (the kernel updates it in place; the call's own tensors are
    left as they are, so a measured call can run again) and the input terms are read in the
    layout the product left them in: at batch 1, torch's copies and conversions of these
    small tensors had cost 60 µs per layer, a quarter of the recurrence itself."""
    a = call.args
    x = call.x
    steps, batch = x.shape[:2]
    xp = _project(x.reshape(steps * batch, -1), a["w_ih"], a["b_ih"]).reshape(steps, batch, -1)
    hn = np.array(a["h"].numpy(), order="C")     # copies
    cn = np.array(a["c"].numpy(), order="C") if a["c"] is not None else None
    out = run_sequence(a["mode"], xp.detach().numpy(), hn, cn, call.weight.twin, _bias_array(call.bias, x.dtype),
                       reverse=a["reverse"], slices=_slices(call.weight))
    return torch.from_numpy(out), torch.from_numpy(hn), (torch.from_numpy(cn) if cn is not None else None)


def _fused_applies(call: Call) -> bool:
    w_ih = call.args["w_ih"]
    # (a kernel forced on W_ih is honoured: its input product then runs on its own)
    return (isinstance(w_ih, CompressedWeight) and not w_ih._transposed and w_ih.forced_kernel is None
            and not call.x.is_cuda and w_ih.shape[1] == call.x.shape[-1])


def _recurrent_fused(call: Call):
    """The input product and the recurrence in one compiled call, on the row twins of the
    compressed ``W_ih`` and ``W_hh`` (:func:`efficientdl.kernels.recurrent.run_layer`)."""
    a = call.args
    w_ih = a["w_ih"]
    # made dense, or a kernel forced on it, since this row was chosen: the input product on its own
    if not isinstance(w_ih, CompressedWeight) or w_ih._transposed or w_ih.forced_kernel is not None:
        return _recurrent_sparse(call)
    x = call.x
    hn = np.array(a["h"].numpy(), order="C")     # copies (the kernel updates the state in place)
    cn = np.array(a["c"].numpy(), order="C") if a["c"] is not None else None
    out = run_layer(a["mode"], x.detach().numpy(), hn, cn, w_ih.twin, _bias_array(a["b_ih"], x.dtype),
                    call.weight.twin, _bias_array(call.bias, x.dtype), reverse=a["reverse"],
                    slices=_slices(call.weight))
    return torch.from_numpy(out), torch.from_numpy(hn), (torch.from_numpy(cn) if cn is not None else None)


def _note_fused_input(call: Call, key: str) -> None:
    """When :data:`_FUSED` becomes ``W_hh``'s choice for ``key``, record it on ``W_ih`` (whose packed
    form it reads) as a ``recurrent-input|…`` choice: the report shows that use, and
    :func:`~efficientdl.nn.weights.settle` does not make ``W_ih`` dense because its own
    ``F.linear`` measurements chose dense.  The forms those measurements made (a decoded copy,
    prepared kernels) are dropped: the fused layer reads only the packed twin."""
    w_ih = call.args["w_ih"]
    mark = "recurrent-input" + key[len("recurrent"):]
    w_ih.chosen[mark] = _FUSED
    w_ih.times_us[mark] = dict(call.weight.times_us.get(key, {}))
    if not w_ih.fallbacks:
        w_ih.release_dense()
        w_ih.prepared.clear()


def _recurrent_dense(call: Call):
    a = call.args
    return _torch_layer(_FUNCS[a["mode"]], a["mode"], call.x, a["w_ih"], call.weight, a["b_ih"], call.bias,
                        a["h"], a["c"], a["reverse"], None)


register_kernel(KernelRow("sparse-loop", "recurrent", lambda c: True, _recurrent_sparse,
                          description="input product over all steps, then a compiled loop on W_hh's row twin"))
_FUSED = register_kernel(KernelRow("sparse-fused", "recurrent", _fused_applies, _recurrent_fused,
                                   description="input product and recurrence in one compiled call on the W_ih and "
                                               "W_hh row twins", on_chosen=_note_fused_input))
register_kernel(KernelRow("dense", "recurrent", lambda c: True, _recurrent_dense, decodes=True,
                          description="torch's recurrent kernel on the decoded weights"))


def _serve(mode: str, args: tuple, kwargs: dict):
    func = _FUNCS[mode]
    # (input, hx, params, …) vs the packed form (data, batch_sizes, hx, params, …)
    packed = (len(args) != 9 or bool(kwargs) or not isinstance(args[2], (list, tuple))
              or (mode == "lstm" and not isinstance(args[1], (list, tuple))))
    if packed:
        return fallback(func, args, kwargs, "packed sequence input")
    input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first = args
    dirs = 2 if bidirectional else 1
    per = 2 + 2 * bool(has_biases)
    if len(params) != per * num_layers * dirs:
        return fallback(func, args, kwargs, "LSTM with projections (proj_size)")
    if train and dropout > 0 and num_layers > 1:
        return fallback(func, args, kwargs, "dropout between layers while training")
    first = next(p for p in params if isinstance(p, CompressedWeight))
    x = check_input(first, input, mode)
    batched = x.dim() == 3
    if not batched:
        x = x.unsqueeze(1)
    elif batch_first:
        x = x.transpose(0, 1)
    steps, batch = x.shape[:2]
    h0_all = hx[0] if mode == "lstm" else hx
    c0_all = hx[1] if mode == "lstm" else None
    if not batched:
        h0_all = h0_all.unsqueeze(1)
        c0_all = c0_all.unsqueeze(1) if c0_all is not None else None
    h_n, c_n = [], []
    layer_in = x
    for layer in range(num_layers):
        outs = []
        for d in range(dirs):
            k = (layer * dirs + d) * per
            w_ih, w_hh = params[k], params[k + 1]
            b_ih, b_hh = (params[k + 2], params[k + 3]) if has_biases else (None, None)
            # the initial state as given (no kernel changes it in place: the sparse loop copies it)
            h = h0_all[layer * dirs + d].detach().to(x.dtype).contiguous()
            c = c0_all[layer * dirs + d].detach().to(x.dtype).contiguous() if c0_all is not None else None
            if isinstance(w_hh, CompressedWeight) and not w_hh._transposed:
                call = Call("recurrent", w_hh, layer_in, b_hh,
                            {"mode": mode, "w_ih": w_ih, "b_ih": b_ih, "h": h, "c": c, "reverse": d == 1},
                            columns=batch)
                out, h_last, c_last = w_hh.dispatcher.run(call)
            else:                                 # torch's kernel for this layer, decoded weights
                out, h_last, c_last = _torch_layer(func, mode, layer_in, w_ih, w_hh, b_ih, b_hh, h, c, d == 1,
                                                   "the recurrent matrix is dense")
            outs.append(out)
            h_n.append(h_last)
            if c_last is not None:
                c_n.append(c_last)
        layer_in = torch.cat(outs, dim=2) if dirs == 2 else outs[0]
    output = layer_in
    if not batched:
        output = output.squeeze(1)
    elif batch_first:
        output = output.transpose(0, 1).contiguous()
    hs = torch.stack(h_n)
    if not batched:
        hs = hs.squeeze(1)
    if mode != "lstm":
        return output, hs
    cs = torch.stack(c_n)
    return output, hs, (cs.squeeze(1) if not batched else cs)


@implements(torch.lstm)
def lstm(*args, **kwargs):
    """``torch.lstm`` (behind ``nn.LSTM``) with compressed gate matrices (see the module docstring)."""
    return _serve("lstm", args, kwargs)


@implements(torch.gru)
def gru(*args, **kwargs):
    """``torch.gru`` (behind ``nn.GRU``) with compressed gate matrices."""
    return _serve("gru", args, kwargs)


@implements(torch.rnn_tanh)
def rnn_tanh(*args, **kwargs):
    """``torch.rnn_tanh`` (behind ``nn.RNN``) with compressed matrices."""
    return _serve("rnn_tanh", args, kwargs)


@implements(torch.rnn_relu)
def rnn_relu(*args, **kwargs):
    """``torch.rnn_relu`` (behind ``nn.RNN(nonlinearity="relu")``) with compressed matrices."""
    return _serve("rnn_relu", args, kwargs)
