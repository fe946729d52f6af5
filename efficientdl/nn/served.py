"""The functions a :class:`~efficientdl.nn.weights.CompressedWeight` serves, and their kernels.

Each served function validates its input once, describes the product as a
:class:`~efficientdl.nn.dispatch.Call` and lets the weight's dispatcher run the kernel
measured fastest for its shape class.  The kernels (rows of
:data:`~efficientdl.nn.dispatch.KERNELS`):

``linear`` — ``y = x Wᵀ + b`` for ``x`` of ``n`` rows:

* ``dense``: ``F.linear`` on the decoded weight (BLAS; kept in memory);
* ``sparse``: the packed kernels of :func:`efficientdl.kernels.cpu.matmul` with the
  row-major twin: at ``n = 1`` the column kernel (skips zero activations, EIE) or the
  row/lookup kernel by the activations' density; for ``n > 1`` the sparse × dense
  product of the twin with ``xᵀ`` laid out channel-major, vectorised over the ``n``
  columns (Elsen et al., CVPR'20 "Fast Sparse ConvNets");
* ``sparse-columns``: the column kernel over all ``n`` columns (zero activation rows
  skipped: ReLU outputs of a batch);
* ``sparse-blocked``: for ``n > 1`` and more than :data:`~efficientdl.kernels.cpu.BLOCK_COLUMNS`
  inputs, the sparse × dense product on a column-blocked copy of the twin (cache blocking;
  kept in memory, so ``prefer="memory"`` excludes it);
* with ``precision="int8"`` also ``int8-sparse`` (the packed kernels on int8 activations,
  quantized per call with one scale per sample, and the int8 codebook, int32 sums) and
  ``int8-dense`` (torch's dynamic int8 linear on the decoded int8 weight).

``conv2d`` (``F.conv1d`` joins as a height-1 ``conv2d``):

* ``dense``: ``F.conv2d`` on the decoded weight;
* ``sparse-1x1``: a 1×1 convolution is ``W · X`` with ``X`` the ``(C, N·H·W)``
  channel-major activations — for one image the NCHW tensor itself, no copy;
* ``sparse-im2col``: ``unfold`` to the ``(C·kh·kw, N·L)`` patch matrix, then the product;
* ``sparse-direct``: direct sparse convolution (Park et al., ICLR'17): each stored weight
  adds its shifted input plane to its output plane — no patch matrix, any ``groups``
  (depthwise included); :func:`efficientdl.kernels.cpu.conv2d_direct`.

``embedding``: ``rows`` decodes the looked-up rows from the row-major twin; ``dense``
indexes the decoded table.
"""

from __future__ import annotations

import threading

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ModelError
from ..kernels import cpu
from .dispatch import Call, KernelRow, register_kernel
from .weights import CompressedWeight, check_input, fallback, implements


# ---------------------------------------------------------------------------- kernels: linear
def _bias(call: Call) -> torch.Tensor | None:
    b = call.bias
    return None if b is None else b.detach().to(call.x.dtype)


def _bias_as(b: torch.Tensor | None, dtype: torch.dtype):
    """The bias in ``dtype`` and, for the numpy kernels, as an array (views, no copy for float32)."""
    if b is None:
        return None, None
    b = b.detach()
    if b.dtype != dtype:
        b = b.to(dtype)
    return b, b.numpy()


def _prepare_dense(call: Call):
    """``F.linear`` on the decoded weight, bound once."""
    dense = call.weight.dense(call.x.dtype)
    dtype = call.x.dtype

    def f(x, b):
        return F.linear(x, dense, b if b is None or b.dtype == dtype else b.to(dtype))
    return f


def _prepare_sparse(call: Call, twin: bool):
    """``x Wᵀ (+ b)`` by the packed kernels for inputs of ``call``'s exact shape, bound once: at one
    column the prepared matrix–vector product; above, the product with ``xᵀ`` laid out channel-major."""
    w = call.weight
    rows, cols = w.shape
    n = call.columns
    dtype = call.x.dtype                          # (the closures keep no reference to the call's tensors)
    cached = [None, None, None]                   # bias tensor → its numpy view

    def bias_numpy(b):
        if cached[0] is not b:
            cached[0], (cached[1], cached[2]) = b, _bias_as(b, dtype)
        return cached[2]

    if n == 1:
        matvec = cpu.matvec_function(w.matrix, w.twin if twin else None)
        out_shape = tuple(call.args["input_shape"][:-1]) + (rows,)

        def f(x, b):
            # numpy's own reshape and add: ~0.2 µs each where torch's cost ~1 µs
            xn = (x.detach() if x.requires_grad else x).numpy().reshape(-1)
            y = matvec(xn if xn.flags.c_contiguous else np.ascontiguousarray(xn))
            if b is not None:
                y += bias_numpy(b)
            return torch.from_numpy(y.reshape(out_shape))
        return f
    matrix, row_twin = w.matrix, (w.twin if twin else None)
    return _channel_major(lambda xt: cpu.matmul(matrix, xt, twin=row_twin), n, cols, rows, dtype)


#: inputs of at most this many elements are transposed by numpy, larger ones by torch: on the
#: 2-core Zen 3, numpy's copy took 6.7 µs for 28 × 128 (torch 16.9) and 3.7 µs for 65 × 64
#: (torch 9.3), but 1,074 µs for 64 × 4,096 (torch's, blocked and threaded, 377)
SMALL_TRANSPOSE_ELEMENTS = 16384


def _channel_major(product, n: int, cols: int, rows: int, dtype: torch.dtype):
    """``f(x, b)`` for ``n > 1`` rows of ``x``: ``product`` of the channel-major ``xᵀ`` (a
    ``(cols, n)`` numpy array → ``(rows, n)``), back to ``x``'s layout, plus the bias (converted
    once per bias tensor).

    ``xᵀ`` starts on a cache line, so the kernels' vector loads of its rows do not straddle
    two lines (numpy's own copies start on 16 bytes: at 16 columns the product ran 1.7× slower
    from one 16 bytes past a line, at 8 columns 1.2×; Zen 5)."""
    cached = [None, None]                         # bias tensor → its numpy view in dtype
    small = n * cols <= SMALL_TRANSPOSE_ELEMENTS
    buffers = threading.local()                   # each thread's own transposed copy, on a cache line
    np_dtype = torch.empty(0, dtype=dtype).numpy().dtype

    def f(x, b):
        if small:                                 # numpy's transposed copy: no torch op overhead
            xt = getattr(buffers, "xt", None)
            if xt is None:
                xt = buffers.xt = cpu.empty_on_cache_lines((cols, n), np_dtype)
            np.copyto(xt, (x.detach() if x.requires_grad else x).numpy().reshape(n, cols).T)
        else:                                     # (torch's allocations start on a cache line)
            xt = x.detach().reshape(n, cols).t().contiguous().numpy()
        y = product(xt).T                         # (n, rows), a transposed view: no copy
        if b is not None:
            if cached[0] is not b:
                cached[0], cached[1] = b, _bias_as(b, dtype)[1]
            y = y + cached[1]                     # numpy keeps the transposed layout
        else:
            y = np.ascontiguousarray(y)
        return torch.from_numpy(y).view(*x.shape[:-1], rows)
    return f


def _row_blocks(w: CompressedWeight) -> cpu.RowBlocks:
    """The weight's column-blocked twin (:func:`efficientdl.kernels.cpu.pack_row_blocks`), packed
    once and kept (its bytes counted with the decoded ones: a copy held for one kernel)."""
    held = w._payload.derived.get("blocks")
    if held is None:
        blocks = cpu.pack_row_blocks(w.codes().reshape(w.matrix.shape), w.matrix.codebook)
        held = w._payload.derived["blocks"] = (blocks, blocks.nbytes)
    return held[0]


def _prepare_sparse_blocked(call: Call):
    """``x Wᵀ (+ b)`` for ``n > 1`` rows of ``x``: the sparse × dense product block of columns by
    block of columns, so each block's rows of ``xᵀ`` stay in the core's caches."""
    w = call.weight
    rows, cols = w.shape
    n = call.columns
    matrix, blocks = w.matrix, _row_blocks(w)
    return _channel_major(lambda xt: cpu.matmul(matrix, xt, blocks=blocks), n, cols, rows, call.x.dtype)


def _run_prepared(prepare):
    """``run`` of a linear row: its kernel prepared for this call's input, then applied to it."""
    return lambda call: prepare(call)(call.args["input"], call.bias)


def _prepare_sparse_rows(call: Call):
    return _prepare_sparse(call, twin=True)


def _prepare_sparse_columns(call: Call):
    return _prepare_sparse(call, twin=False)


register_kernel(KernelRow("dense", "linear", lambda c: True, _run_prepared(_prepare_dense), decodes=True,
                          description="F.linear on the decoded dense weight", prepare=_prepare_dense))
register_kernel(KernelRow("sparse", "linear", lambda c: True, _run_prepared(_prepare_sparse_rows),
                          description="packed sparse kernels: column/row at n=1, sparse × dense (channel-major) above",
                          prepare=_prepare_sparse_rows))
register_kernel(KernelRow("sparse-columns", "linear", lambda c: c.columns > 1, _run_prepared(_prepare_sparse_columns),
                          description="column kernel over all columns (skips zero activation rows)",
                          prepare=_prepare_sparse_columns))
register_kernel(KernelRow("sparse-blocked", "linear",
                          lambda c: c.columns > 1 and c.weight.shape[1] > cpu.BLOCK_COLUMNS,
                          _run_prepared(_prepare_sparse_blocked), decodes=True,
                          description="sparse × dense block of columns by block (a second, blocked copy of the entries)",
                          prepare=_prepare_sparse_blocked))


# ------------------------------------------------------------------------ kernels: linear, int8
def _int8_applies(call: Call) -> bool:
    """The int8 rows serve float32 products whose rows fit an int32 sum (the dispatcher admits
    them only with ``precision="int8"``)."""
    return call.x.dtype == torch.float32 and call.weight.shape[1] <= cpu.INT8_MAX_COLUMNS


def _prepare_int8_sparse(call: Call):
    """``x Wᵀ (+ b)`` on int8 activations (one symmetric scale per sample, per call) and the int8
    codebook, summed in int32 by the packed kernels (:func:`efficientdl.kernels.cpu.matmul_int8`)."""
    w = call.weight
    rows, cols = w.shape
    n = call.columns
    matrix, twin = w.matrix, w.twin
    if n == 1:
        matvec = cpu.matvec_int8_function(matrix, twin)
        out_shape = tuple(call.args["input_shape"][:-1]) + (rows,)

        def f(x, b):
            xn = x.detach().numpy().reshape(-1)
            y = matvec(xn if xn.flags.c_contiguous else np.ascontiguousarray(xn))
            if b is not None:
                y += _bias_as(b, torch.float32)[1]
            return torch.from_numpy(y.reshape(out_shape))
        return f
    return _channel_major(lambda xt: cpu.matmul_int8(matrix, xt, twin=twin), n, cols, rows, torch.float32)


def _quantized_linear_available() -> bool:
    """torch's int8 linear (fbgemm / x86 / onednn engines) is in this build."""
    ops = getattr(torch.ops, "quantized", None)
    return (ops is not None and hasattr(ops, "linear_dynamic") and hasattr(ops, "linear_prepack")
            and any(e in torch.backends.quantized.supported_engines for e in ("x86", "fbgemm", "onednn")))


def _int8_dense_weight(w: CompressedWeight):
    """The weight as torch's prepacked int8 linear weight: the int8 codebook values
    ``q_w[code]`` with their one scale ``s_w`` (the same int8 weights as the sparse int8
    kernel), packed once and kept on the weight (counted as decoded bytes)."""
    held = w._payload.derived.get("int8-dense")
    if held is None:
        import warnings

        codebook_q, scale_w = cpu.quantize_codebook(w.matrix.codebook)
        values = torch.from_numpy((codebook_q[cpu.unpack(w.matrix)] * scale_w).astype(np.float32))
        with warnings.catch_warnings():          # torch marks its quantized tensors as deprecated
            warnings.simplefilter("ignore")
            qweight = torch.quantize_per_tensor(values, float(scale_w), 0, torch.qint8)
            packed = torch.ops.quantized.linear_prepack(qweight, None)
        held = w._payload.derived["int8-dense"] = (packed, int(np.prod(w.matrix.shape)))
    return held[0]


def _prepare_int8_dense(call: Call):
    """``x Wᵀ (+ b)`` by torch's dynamic int8 linear (fbgemm: activations quantized per call to
    uint8 with 7-bit range, int8 weights, int32 sums) on the decoded int8 weight — the dense
    int8 path for layers where sparsity does not pay."""
    packed = _int8_dense_weight(call.weight)
    rows, cols = call.weight.shape
    linear = torch.ops.quantized.linear_dynamic

    def f(x, b):
        y = linear(x.detach().reshape(-1, cols), packed, True)
        if b is not None:
            y += b.detach().to(torch.float32)
        return y.view(*x.shape[:-1], rows)
    return f


register_kernel(KernelRow("int8-sparse", "linear", _int8_applies, _run_prepared(_prepare_int8_sparse),
                          description="packed sparse kernels on int8 activations and codebook, int32 sums",
                          prepare=_prepare_int8_sparse, approximate=True))
register_kernel(KernelRow("int8-dense", "linear", lambda c: _int8_applies(c) and _quantized_linear_available(),
                          _run_prepared(_prepare_int8_dense), decodes=True,
                          description="torch's dynamic int8 linear (fbgemm) on the decoded int8 weight",
                          prepare=_prepare_int8_dense, approximate=True))


# ---------------------------------------------------------------------------- kernels: conv2d
def _conv_prepared(run):
    """``prepare`` of a conv2d row: for later inputs of the same shape, reshape/pad and run, unchecked."""
    def prepare(call: Call):
        w, args, columns = call.weight, call.args, call.columns
        pre, post = args["pre"], args["post"]

        def f(x, b):
            return post(run(Call("conv2d", w, pre(x), b, args, columns)))
        return f
    return prepare


def _conv_dense(call: Call) -> torch.Tensor:
    a = call.args
    weight = call.weight.dense(call.x.dtype)
    return F.conv2d(call.x, weight.reshape(a["weight_shape"]), _bias(call), a["stride"], a["padding"], a["dilation"],
                    a["groups"])


def _conv_out(call: Call, y_cols: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """``(O, N·out_h·out_w)`` product columns → ``(N, O, out_h, out_w)`` plus bias."""
    n = call.x.shape[0]
    o = y_cols.shape[0]
    y = y_cols.reshape(o, n, out_h, out_w)
    y = y[:, 0].unsqueeze(0) if n == 1 else y.permute(1, 0, 2, 3)
    b = _bias(call)
    if b is not None:
        y = y + b.view(1, -1, 1, 1)
    return y.contiguous()


def _conv_1x1(call: Call) -> torch.Tensor:
    sh, sw = call.args["stride"]
    x = call.x if (sh, sw) == (1, 1) else call.x[:, :, ::sh, ::sw]
    n, c, h, w = x.shape
    cols = x[0].reshape(c, h * w) if n == 1 else x.permute(1, 0, 2, 3).reshape(c, n * h * w)
    y = cpu.matmul(call.weight.matrix, cols.contiguous().numpy(), twin=call.weight.twin)
    return _conv_out(call, torch.from_numpy(y), h, w)


def _conv_im2col(call: Call) -> torch.Tensor:
    a = call.args
    kh, kw = a["weight_shape"][2:]
    n, _, h, w = call.x.shape
    out_h = (h + 2 * a["padding"][0] - a["dilation"][0] * (kh - 1) - 1) // a["stride"][0] + 1
    out_w = (w + 2 * a["padding"][1] - a["dilation"][1] * (kw - 1) - 1) // a["stride"][1] + 1
    patches = F.unfold(call.x, (kh, kw), a["dilation"], a["padding"], a["stride"])       # (N, C·kh·kw, L)
    cols = patches[0] if n == 1 else patches.permute(1, 0, 2).reshape(patches.shape[1], -1)
    y = cpu.matmul(call.weight.matrix, cols.contiguous().numpy(), twin=call.weight.twin)
    return _conv_out(call, torch.from_numpy(y), out_h, out_w)


def _conv_direct(call: Call) -> torch.Tensor:
    a = call.args
    ph, pw = a["padding"]
    x = F.pad(call.x, (pw, pw, ph, ph)) if ph or pw else call.x
    y = torch.from_numpy(cpu.conv2d_direct(call.weight.twin, x.contiguous().numpy(), tuple(a["weight_shape"][2:]),
                                           a["stride"], a["dilation"], a["groups"]))
    b = _bias(call)
    return y if b is None else y.add_(b.view(1, -1, 1, 1))


def _is_1x1(call: Call) -> bool:
    a = call.args
    return a["groups"] == 1 and tuple(a["weight_shape"][2:]) == (1, 1) and tuple(a["padding"]) == (0, 0)


register_kernel(KernelRow("dense", "conv2d", lambda c: True, _conv_dense, decodes=True,
                          description="F.conv2d on the decoded dense weight", prepare=_conv_prepared(_conv_dense)))
register_kernel(KernelRow("sparse-1x1", "conv2d", _is_1x1, _conv_1x1,
                          description="1×1 convolution as W · X on channel-major activations",
                          prepare=_conv_prepared(_conv_1x1)))
register_kernel(KernelRow("sparse-im2col", "conv2d", lambda c: c.args["groups"] == 1, _conv_im2col,
                          description="im2col patch matrix, then the packed product",
                          prepare=_conv_prepared(_conv_im2col)))
register_kernel(KernelRow("sparse-direct", "conv2d", lambda c: True, _conv_direct,
                          description="direct sparse convolution: each stored weight adds a shifted input plane "
                                      "(any groups, depthwise included; no im2col)",
                          prepare=_conv_prepared(_conv_direct)))


# ---------------------------------------------------------------------------- kernels: embedding
def _embedding_rows(call: Call) -> torch.Tensor:
    rows = cpu.gather_rows(call.weight.twin, call.x.numpy(), np.float32)
    return torch.from_numpy(rows)


def _embedding_dense(call: Call) -> torch.Tensor:
    return F.embedding(call.x, call.weight.dense(torch.float32))


register_kernel(KernelRow("rows", "embedding", lambda c: True, _embedding_rows,
                          description="the looked-up rows decoded from the row-major twin"))
register_kernel(KernelRow("dense", "embedding", lambda c: True, _embedding_dense, decodes=True,
                          description="indexing the decoded dense table"))


# ---------------------------------------------------------------------------- served functions
def _only_weight(weight, *others) -> bool:
    """The call has the compressed tensor where a weight belongs, untransposed, and nowhere else."""
    return (isinstance(weight, CompressedWeight) and not weight._transposed
            and not any(isinstance(o, CompressedWeight) for o in others))


def linear(input, weight, bias=None):
    """``F.linear`` served from a compressed weight: ``y = x Wᵀ + b`` for ``x`` of shape ``(..., in)``.

    A call whose exact input (shape, dtype, device, with or without bias) was seen before
    goes straight to the kernel prepared for it; the first one is validated, dispatched
    and prepares it.
    """
    if type(weight) is CompressedWeight and type(input) is not CompressedWeight and type(bias) is not CompressedWeight:
        try:
            fast = weight._payload.prepared.get((input.shape, input.dtype, input.is_cuda, bias is None))
        except AttributeError:                    # not a tensor: the full path says so
            fast = None
        if fast is not None and not weight._transposed:
            return fast(input, bias)
    if not _only_weight(weight, input, bias) or weight.dim() != 2:
        return fallback(F.linear, (input, weight, bias), {}, "the compressed tensor is not the weight argument")
    x = check_input(weight, input, "linear")
    rows, cols = weight.shape
    if x.dim() < 1 or x.shape[-1] != cols:
        raise ModelError(f"{weight.name or 'compressed weight'}: linear expects (..., {cols}) input, got "
                         f"{tuple(x.shape)}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, cols)
    key = (input.shape, input.dtype, input.is_cuda, bias is None)
    y = weight.dispatcher.run(Call("linear", weight, x2, bias, {"input_shape": tuple(input.shape), "input": input},
                                   columns=x2.shape[0]), exact_key=key)
    return y.reshape(*lead, rows)


implements(F.linear)(linear)


def _conv_padding(padding, weight_shape, dilation, stride):
    """Numeric ``(top, left)`` padding, or a 4-tuple for ``F.pad`` when "same" is asymmetric."""
    if not isinstance(padding, str):
        return tuple(padding), None
    if padding == "valid":
        return (0, 0), None
    if padding != "same":
        raise ModelError(f"padding must be 'same', 'valid' or numbers, got {padding!r}")
    if tuple(stride) != (1, 1):
        raise ModelError("padding='same' needs stride 1")
    total = [d * (k - 1) for d, k in zip(dilation, weight_shape[2:])]
    if all(t % 2 == 0 for t in total):
        return (total[0] // 2, total[1] // 2), None
    return (0, 0), (total[1] // 2, total[1] - total[1] // 2, total[0] // 2, total[0] - total[0] // 2)


def _pair(v, one_d: bool):
    v = tuple(v) if isinstance(v, (tuple, list)) else (v,) * (1 if one_d else 2)
    return ((1,) + v if len(v) == 1 else v) if one_d else (v * 2 if len(v) == 1 else v)


def _conv(input, weight, bias, stride, padding, dilation, groups, one_d: bool):
    func = F.conv1d if one_d else F.conv2d
    key = None
    if (type(weight) is CompressedWeight and isinstance(input, torch.Tensor) and type(input) is not CompressedWeight
            and type(bias) is not CompressedWeight and not weight._transposed):
        try:
            key = ("conv", one_d, input.shape, input.dtype, input.is_cuda, bias is None, stride, padding, dilation,
                   groups)
            fast = weight._payload.prepared.get(key)
        except TypeError:                         # unhashable arguments (a list): the full path
            key = fast = None
        if fast is not None:
            return fast(input, bias)
    if not _only_weight(weight, input, bias):
        return fallback(func, (input, weight, bias, stride, padding, dilation, groups), {},
                        "the compressed tensor is not the weight argument")
    x = check_input(weight, input, func.__name__)
    shape = tuple(weight.shape)
    dims = 3 if one_d else 4
    if len(shape) != dims:
        raise ModelError(f"{weight.name}: {func.__name__} needs a {dims}-D weight, got {shape}")
    if x.dim() not in (dims - 1, dims) or x.shape[-(dims - 1)] != shape[1] * groups:
        raise ModelError(f"{weight.name or 'compressed weight'}: {func.__name__} expects (N, {shape[1] * groups}, "
                         f"{'L' if one_d else 'H, W'}) input, got {tuple(x.shape)}")
    single = x.dim() == dims - 1
    if single:
        x = x.unsqueeze(0)
    weight_shape = (shape[0], shape[1], 1, shape[2]) if one_d else shape
    if one_d:
        x = x.unsqueeze(2)
        padding = padding if isinstance(padding, str) else (0,) + _pair(padding, True)[1:]
    stride, dilation = _pair(stride, one_d), _pair(dilation, one_d)
    padding, pad = _conv_padding(padding if isinstance(padding, str) else _pair(padding, one_d), weight_shape,
                                 dilation, stride)
    if pad is not None:
        x = F.pad(x, pad)
    kh, kw = weight_shape[2:]
    out_h = (x.shape[2] + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    out_w = (x.shape[3] + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    if out_h < 1 or out_w < 1:
        raise ModelError(f"{weight.name or 'compressed weight'}: input {tuple(input.shape)} is smaller than the "
                         f"{kh}×{kw} kernel")
    def pre(t: torch.Tensor) -> torch.Tensor:     # the served input → the kernels' (N, C, H, W), padded
        t = t.detach() if t.requires_grad else t
        t = t.unsqueeze(0) if single else t
        t = t.unsqueeze(2) if one_d else t
        return (F.pad(t, pad) if pad is not None else t).contiguous()

    def post(y: torch.Tensor) -> torch.Tensor:
        y = y.squeeze(2) if one_d else y
        return y[0] if single else y

    call = Call("conv2d", weight, x.contiguous(), bias,
                {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups,
                 "weight_shape": weight_shape, "pre": pre, "post": post}, columns=x.shape[0] * out_h * out_w)
    return post(weight.dispatcher.run(call, exact_key=key))



@implements(F.conv2d)
def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """``F.conv2d`` served from a compressed weight (any padding, stride, dilation; groups by the dense kernel)."""
    return _conv(input, weight, bias, stride, padding, dilation, groups, one_d=False)


@implements(F.conv1d)
def conv1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """``F.conv1d`` served as a height-1 ``conv2d``."""
    return _conv(input, weight, bias, stride, padding, dilation, groups, one_d=True)


@implements(F.embedding)
def embedding(input, weight, padding_idx=None, max_norm=None, norm_type=2.0, scale_grad_by_freq=False,
              sparse=False):
    """``F.embedding`` served from a compressed table (``padding_idx`` only shapes gradients: no effect here)."""
    if not _only_weight(weight, input) or max_norm is not None:
        return fallback(F.embedding, (input, weight, padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse),
                        {}, "max_norm renormalises the table in place" if max_norm is not None
                        else "the compressed tensor is not the weight argument")
    if not isinstance(input, torch.Tensor) or input.dtype not in (torch.int64, torch.int32):
        raise ModelError(f"{weight.name or 'compressed weight'}: embedding needs integer indices, got "
                         f"{getattr(input, 'dtype', type(input).__name__)}")
    if input.device.type != "cpu":
        raise ModelError(f"{weight.name or 'compressed weight'}: indices are on {input.device}, the table on cpu")
    rows = weight.shape[0]
    if input.numel() and (int(input.min()) < 0 or int(input.max()) >= rows):
        raise ModelError(f"{weight.name or 'compressed weight'}: index out of range for {rows} rows")
    idx = input.detach().to(torch.int64)
    call = Call("embedding", weight, idx, columns=idx.numel())
    return weight.dispatcher.run(call).reshape(*idx.shape, weight.shape[1])


# ---------------------------------------------------------------------------- matmul family
@implements(torch.Tensor.t, torch.t, torch.Tensor.T.__get__, torch.Tensor.mT.__get__)
def transposed(self):
    """``W.t()`` / ``W.T``: a view of the same compressed weight, transposed."""
    if self.dim() != 2:
        return fallback(torch.Tensor.t, (self,), {}, "transpose of a compressed weight of more than 2 dimensions")
    return self.transposed_view()


@implements(torch.Tensor.transpose, torch.transpose)
def transpose(self, dim0, dim1):
    if isinstance(self, CompressedWeight) and self.dim() == 2 and {dim0 % 2, dim1 % 2} == {0, 1}:
        return self.transposed_view()
    return fallback(torch.transpose, (self, dim0, dim1), {}, "transpose other than of the two matrix dimensions")


def _times(a, b, func, bias=None):
    """``a @ b`` where one side is compressed: ``x @ Wᵀ`` is ``linear(x, W)``; ``W @ x`` is ``linear(xᵀ, W)ᵀ``."""
    if isinstance(b, CompressedWeight) and b._transposed and not isinstance(a, CompressedWeight) and a.dim() >= 1:
        return linear(a, b.transposed_view(), bias)
    if (isinstance(a, CompressedWeight) and not a._transposed and a.dim() == 2 and not isinstance(b, CompressedWeight)
            and isinstance(b, torch.Tensor) and b.dim() in (1, 2) and bias is None):
        if b.dim() == 1:
            return linear(b.unsqueeze(0), a)[0]
        return linear(b.t(), a).t()
    return None


@implements(torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.mm, torch.Tensor.mm)
def matmul(a, b, *, out=None):
    """``a @ b`` with a compressed weight as ``W`` or ``Wᵀ`` (see :func:`_times`)."""
    y = _times(a, b, torch.matmul) if out is None else None
    return y if y is not None else fallback(torch.matmul, (a, b), {} if out is None else {"out": out},
                                            "matrix product with the compressed tensor in another role")


@implements(torch.Tensor.__rmatmul__)
def rmatmul(self, other):
    y = _times(other, self, torch.matmul)
    return y if y is not None else fallback(torch.matmul, (other, self), {}, "matrix product in another role")


@implements(torch.addmm, torch.Tensor.addmm)
def addmm(input, mat1, mat2, *, beta=1, alpha=1, out=None):
    """``beta · input + alpha · mat1 @ mat2``; served when it is ``b + x Wᵀ``."""
    if beta == 1 and alpha == 1 and out is None and not isinstance(input, CompressedWeight):
        y = _times(mat1, mat2, torch.addmm, bias=input)
        if y is not None:
            return y
    kwargs = {"beta": beta, "alpha": alpha} | ({} if out is None else {"out": out})
    return fallback(torch.addmm, (input, mat1, mat2), kwargs, "addmm with scaling or the weight in another role")


from . import attention as _attention, recurrent as _recurrent  # noqa: E402,F401  (register their functions)
