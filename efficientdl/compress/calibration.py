"""Statistics of unlabeled calibration samples, shared by the post-training methods.

Layer-wise reconstruction (Optimal Brain Surgeon, Hassibi & Stork 1993; SparseGPT,
Frantar & Alistarh ICML'23) and Wanda (Sun, Liu, Bair, Kolter 2023) need, for each weight
``W`` (rows = outputs), the inputs ``X`` that multiply its rows: the layer computes
``W X`` with one column of ``X`` per sample position.  :func:`collect_statistics`
gathers, with forward hooks in one pass over the data,

* the input Gram matrix ``H = Σ_n x_n x_nᵀ = X Xᵀ`` (the Hessian of ``‖W X − Ŵ X‖²``
  up to the factor 2), accumulated in float64;
* the column squared norms ``‖X_j‖² = H_jj`` (what Wanda weights ``|W_ij|`` by);
* the column sums ``Σ_n x_n`` (the mean input, what bias correction needs);
* the number of sample vectors ``n``.

Nothing is stored per sample: each batch's contribution is added and dropped.

What the inputs are, per layer type:

* ``nn.Linear`` (and subclasses): the last dimension of the input; every leading
  position (batch, sequence, …) is one sample.
* ``nn.Conv2d`` (and subclasses, also with their own ``forward``): the im2col patches of
  the input the module receives (``torch.nn.functional.unfold`` with the layer's kernel,
  stride, padding and dilation), so a patch's order ``(C_in, kh, kw)`` is the order of
  ``weight.reshape(C_out, -1)``.  ``padding="same"``/``"valid"`` and non-zero padding
  modes are honoured.  A subclass whose ``forward`` pads the input itself (TF-style
  "same" convolutions calling ``F.pad`` then ``F.conv2d`` with padding 0): the hook sees
  the unpadded input; when the patch count does not match the output's size, the
  padding is inferred from the output as TF "same" does (``total = (out − 1)·stride +
  dilation·(k − 1) + 1 − in``, the odd pixel at the bottom/right).  Padding other than
  that (reflection done by hand, crops) is not recognised: its border patches would be
  computed with zeros.
* Grouped and depthwise ``nn.Conv2d`` (``groups = g > 1``): one Gram matrix per group,
  ``gram`` of shape ``[g, d_g, d_g]`` with ``d_g = C_in/g · kh · kw``; output row ``i``
  belongs to group ``i // (C_out/g)``.
* Recurrent gate matrices of ``nn.LSTM``/``nn.GRU``/``nn.RNN`` (any ``num_layers``,
  ``batch_first`` or not, bidirectional, a given initial state or zeros, unbatched 2-D
  input).  Layer ``k`` of direction ``d`` computes its ``G`` gates (``G = 4`` for the
  LSTM's ``i, f, g, o``, ``3`` for the GRU's ``r, z, n``, ``1`` for the plain RNN) as
  ``W_ih x_t + b_ih + W_hh h_{t−1} + b_hh``, so

  - ``weight_ih_l{k}[_reverse]`` (``[G·H, in]``) multiplies ``x_t``: for ``k = 0`` the
    module's input at every step, for ``k > 0`` the output sequence of layer ``k − 1``
    (both directions concatenated, ``[h→_t; h←_t]``, when bidirectional) — the same
    rows for both directions;
  - ``weight_hh_l{k}`` (``[G·H, H]``) multiplies ``h_{t−1}``: the initial state ``h_0``
    (zeros, or the given ``hx``; for an LSTM the ``h`` of ``(h_0, c_0)``) at the first
    step, then the layer's own outputs ``h_1 … h_{T−1}``; ``weight_hh_l{k}_reverse``
    the same for the direction that runs from ``t = T`` down to 1 (``h_0`` of that
    direction, then ``h←_T … h←_2``).

  Every time step of every sequence is one sample.  The fused kernel never exposes
  these inputs: a forward hook on the recurrent module re-runs each layer alone, a
  one-layer module of the same type called with ``torch.func.functional_call`` on that
  layer's own (possibly masked) parameters, and takes ``x_t`` and ``h_{t−1}`` from its
  input and output sequences.  The ``G`` gate blocks of a matrix share one Gram matrix.
* ``nn.MultiheadAttention``: ``in_proj_weight`` (``[3E, E]``) computes
  ``[W_q q; W_k k; W_v v]``: its three row blocks multiply the query, the key and the
  value, so its statistics have ``groups = 3`` (``gram[0]`` of the queries, ``gram[1]``
  of the keys, ``gram[2]`` of the values; the counts may differ, see
  :attr:`Statistics.group_counts`) — self-attention gives the same Gram three times,
  computed once.  With ``kdim``/``vdim ≠ embed_dim``, ``q_proj_weight``,
  ``k_proj_weight`` and ``v_proj_weight`` each get their own input.  ``out_proj`` (an
  ``nn.Linear`` whose ``forward`` never runs: the module calls
  ``F.multi_head_attention_forward``) multiplies the concatenated heads
  ``concat_h(softmax(Q_h K_hᵀ/√d_h + mask) V_h)``; a hook on the attention module
  recomputes them by calling ``F.multi_head_attention_forward`` with the module's own
  parameters and arguments (masks, ``need_weights``, ``is_causal``, ``batch_first``
  layout) but the output projection replaced by the identity without bias.

Not covered (their tensors are skipped by ``keys=None`` and refused when named):
embeddings, ``Conv1d``/``Conv3d``, matrices registered directly on custom modules, the
projections ``weight_hr_l*`` of an LSTM with ``proj_size > 0`` (none of that LSTM's
matrices is covered), and ``bias_k``/``bias_v`` of attention.  A recurrent module called
on a ``PackedSequence`` is refused when the calibration data reaches it.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.utils.rnn import PackedSequence

from ..core.tensors import WeightTensor, compressible_tensors
from ..errors import RecipeError


@dataclass
class Statistics:
    """Calibration statistics of the inputs of one weight tensor.

    Attributes:
        count: number of sample vectors ``n`` (columns of ``X``); for attention's
            ``in_proj_weight`` that of the queries (group 0).
        gram: ``H = X Xᵀ`` in float64, ``[d, d]``; for a grouped convolution one per
            group, ``[g, d_g, d_g]`` (attention's ``in_proj_weight``: ``g = 3``, the
            queries, keys and values); ``None`` when collected with ``gram=False``.
        sq_norms: the column squared norms ``‖X_j‖²`` (the diagonal of ``H``), ``[d]``
            or ``[g, d_g]``, float64.
        groups: the convolution's groups (1 for a linear layer; 3 for ``in_proj_weight``):
            weight row ``i`` multiplies the inputs of group ``i // (rows / groups)``.
        sums: the column sums ``Σ_n x_n``, the shape of :attr:`sq_norms`, float64.
        group_counts: with ``groups > 1``, the sample count of each group (they differ
            for cross-attention, whose keys and values are another sequence than the
            queries); ``None`` otherwise.
    """

    count: int
    gram: torch.Tensor | None
    sq_norms: torch.Tensor
    groups: int = 1
    sums: torch.Tensor | None = None
    group_counts: tuple[int, ...] | None = None

    @property
    def mean(self) -> torch.Tensor:
        """The mean input ``E[x] = Σ_n x_n / n``, the shape of :attr:`sq_norms` (per group's own ``n``)."""
        if self.sums is None:
            raise RecipeError("calibration: the statistics hold no input sums")
        if self.group_counts is not None and self.groups > 1:
            counts = torch.tensor(self.group_counts, dtype=self.sums.dtype, device=self.sums.device)
            return self.sums / counts.clamp(min=1).reshape(-1, 1)
        return self.sums / max(self.count, 1)

    @property
    def norms(self) -> torch.Tensor:
        """``‖X_j‖₂``, the shape of :attr:`sq_norms`."""
        return self.sq_norms.sqrt()

    def row_norms(self, rows: int) -> torch.Tensor:
        """The input norms each weight row is multiplied by: ``[rows, d_g]`` (group-aware).

        Args:
            rows: the weight's number of rows (``C_out`` or ``out_features``).
        """
        norms = self.norms
        if self.groups == 1:
            return norms.reshape(1, -1).expand(rows, -1)
        return norms.repeat_interleave(rows // self.groups, dim=0)

    def group_gram(self, group: int) -> torch.Tensor:
        """The Gram matrix of one group's inputs (``group = 0`` for an ungrouped layer)."""
        if self.gram is None:
            raise RecipeError("calibration: the statistics were collected without the Gram matrix")
        return self.gram if self.groups == 1 else self.gram[group]


#: the recurrent layers whose gate matrices are covered
RECURRENT_TYPES: tuple[type[nn.Module], ...] = (nn.LSTM, nn.GRU, nn.RNN)
_GATE_MATRIX = re.compile(r"weight_(ih|hh)_l(\d+)(_reverse)?")
#: the input each projection matrix of ``nn.MultiheadAttention`` multiplies (per row block)
_ATTENTION_INPUTS = {"in_proj_weight": ("query", "key", "value"), "q_proj_weight": ("query",),
                     "k_proj_weight": ("key",), "v_proj_weight": ("value",)}


def _recurrent_type(module: nn.Module) -> type[nn.Module] | None:
    """``nn.LSTM``, ``nn.GRU`` or ``nn.RNN`` when ``module`` is one (or a subclass), else ``None``."""
    return next((kind for kind in RECURRENT_TYPES if isinstance(module, kind)), None)


def is_covered(tensor: WeightTensor, model: nn.Module | None = None) -> bool:
    """Whether :func:`collect_statistics` can gather the inputs of ``tensor``.

    Args:
        tensor: a tensor of :func:`~efficientdl.core.tensors.compressible_tensors`.
        model: the model; accepted for compatibility, coverage does not depend on it
            (``out_proj`` of an ``nn.MultiheadAttention`` is covered: its input is
            gathered by a hook on the attention module).

    Returns:
        ``True`` for the ``weight`` of an ``nn.Linear`` (``out_proj`` of attention
        included) or ``nn.Conv2d`` (subclasses too), the gate matrices
        ``weight_ih_l{k}[_reverse]``/``weight_hh_l{k}[_reverse]`` of an
        ``nn.LSTM``/``nn.GRU``/``nn.RNN`` without ``proj_size``, and ``in_proj_weight``
        / ``q_proj_weight`` / ``k_proj_weight`` / ``v_proj_weight`` of an
        ``nn.MultiheadAttention``.
    """
    module = tensor.module
    if _recurrent_type(module) is not None:
        return getattr(module, "proj_size", 0) == 0 and _GATE_MATRIX.fullmatch(tensor.attr) is not None
    if isinstance(module, nn.MultiheadAttention):
        return tensor.attr in _ATTENTION_INPUTS
    return tensor.attr == "weight" and isinstance(module, (nn.Linear, nn.Conv2d))


def _attention_parent(tensor: WeightTensor, model: nn.Module) -> nn.MultiheadAttention | None:
    """The ``nn.MultiheadAttention`` whose ``out_proj`` the tensor is, else ``None``."""
    if tensor.attr != "weight" or not tensor.module_name:
        return None
    parent_name, _, child = tensor.module_name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(parent, nn.MultiheadAttention) and child == "out_proj" and parent.out_proj is tensor.module:
        return parent
    return None


def _conv_padding(module: nn.Conv2d, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """The input as the convolution sees it after its own padding, and the padding left to unfold."""
    if module.padding_mode != "zeros":
        return F.pad(x, module._reversed_padding_repeated_twice, mode=module.padding_mode), (0, 0)
    if module.padding == "valid":
        return x, (0, 0)
    if module.padding == "same":
        pads = []
        for k, d in zip(reversed(module.kernel_size), reversed(module.dilation)):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        return F.pad(x, pads), (0, 0)
    return x, tuple(module.padding)


def _conv_patches(module: nn.Conv2d, x: torch.Tensor, out_hw: tuple[int, int] | None) -> torch.Tensor:
    """im2col patches ``[N·L, C_in·kh·kw]`` of the input the convolution received."""
    if x.dim() == 3:
        x = x.unsqueeze(0)
    x, padding = _conv_padding(module, x)
    kernel, stride, dilation = module.kernel_size, module.stride, module.dilation
    cols = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)
    if out_hw is not None and cols.shape[-1] != out_hw[0] * out_hw[1]:
        # the module padded its input itself (TF-style "same"): infer the padding from the output
        pads = []
        for i in (1, 0):
            size = x.shape[2 + i]
            total = max((out_hw[i] - 1) * stride[i] + dilation[i] * (kernel[i] - 1) + 1 - size, 0)
            pads += [total // 2, total - total // 2]
        cols = F.unfold(F.pad(x, pads), kernel, dilation=dilation, padding=0, stride=stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def _moments(rows: torch.Tensor, gram: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(Σ x², Σ x, Xᵀ X)`` over the sample dimension (``-2``) of ``rows``, in float64."""
    x = rows.detach().to(torch.float64)
    return (x * x).sum(dim=-2), x.sum(dim=-2), (x.transpose(-1, -2) @ x if gram else None)


class _Accumulator:
    """Streams ``H += Xᵀ X`` (or only the column squared norms) for one weight tensor."""

    def __init__(self, groups: int, gram: bool):
        self.groups, self.with_gram = groups, gram
        self.counts = [0] * groups
        self.gram: torch.Tensor | None = None
        self.sq: torch.Tensor | None = None
        self.sums: torch.Tensor | None = None

    def _accumulate(self, sq: torch.Tensor, sums: torch.Tensor, gram: torch.Tensor | None,
                    counts: Sequence[int]) -> None:
        if self.sq is None:
            self.sq, self.sums = torch.zeros_like(sq), torch.zeros_like(sums)
            self.gram = torch.zeros_like(gram) if gram is not None else None
        self.sq += sq
        self.sums += sums
        if gram is not None:
            self.gram += gram
        self.counts = [c + n for c, n in zip(self.counts, counts)]

    def add(self, rows: torch.Tensor) -> None:
        """Rows ``[n, groups·d_g]`` each holding every group's inputs (a grouped convolution's patches)."""
        x, g = rows, self.groups
        if g > 1:
            x = x.reshape(x.shape[0], g, -1).transpose(0, 1)  # [g, n, d_g]
        self._accumulate(*_moments(x, self.with_gram), [rows.shape[0]] * g)

    def add_parts(self, parts: Sequence[torch.Tensor], cache: dict[int, tuple]) -> None:
        """One ``[n_g, d]`` per group (attention's query, key and value rows, or one tensor).

        ``cache`` maps ``id(part)`` to its moments within one forward call, so a tensor
        several accumulators (or groups) share — self-attention's ``query is key is
        value``, the one input of both directions of a recurrent layer — is reduced once.
        """
        if len(parts) != self.groups:
            raise AssertionError(f"{len(parts)} parts for {self.groups} groups")
        moments = []
        for part in parts:
            if id(part) not in cache:
                cache[id(part)] = _moments(part, self.with_gram)
            moments.append(cache[id(part)])
        if self.groups == 1:
            sq, sums, gram = moments[0]
        else:
            sq, sums = torch.stack([m[0] for m in moments]), torch.stack([m[1] for m in moments])
            gram = torch.stack([m[2] for m in moments]) if self.with_gram else None
        self._accumulate(sq, sums, gram, [part.shape[0] for part in parts])

    def result(self) -> Statistics:
        group_counts = tuple(self.counts) if self.groups > 1 else None
        return Statistics(self.counts[0], self.gram, self.sq, self.groups, self.sums, group_counts)


def _recurrent_rows(module: nn.Module, args: tuple, kwargs: dict, attrs: set[str]) -> dict[str, list[torch.Tensor]]:
    """The rows each gate matrix ``attrs`` of a recurrent module multiplied in one call.

    Each layer is re-run alone: a one-layer module of the same type (both directions
    when bidirectional) on the meta device, called through ``functional_call`` with the
    layer's own parameters (as the model computes them, masks included).  From its
    time-major input ``x`` ``[T, B, in]``, initial state ``h_0`` and output ``y``
    ``[T, B, D·H]``: ``weight_ih_l{k}[_reverse]`` ← ``x_t``; ``weight_hh_l{k}`` ←
    ``h_0, y→_1 … y→_{T−1}``; ``weight_hh_l{k}_reverse`` ← ``y←_2 … y←_T, h_0←``.
    """
    kind = _recurrent_type(module)
    bound = inspect.signature(kind.forward).bind(module, *args, **kwargs)
    x, hx = bound.arguments["input"], bound.arguments.get("hx")
    if isinstance(x, PackedSequence):
        raise RecipeError(f"calibration: a {kind.__name__} called on a PackedSequence is not covered "
                          "(pad the sequences, or leave its gate matrices out of the selection)")
    directions, hidden = (2 if module.bidirectional else 1), module.hidden_size
    states = list(hx) if isinstance(hx, (tuple, list)) else ([hx] if hx is not None else None)
    if x.dim() == 2:                                       # unbatched: [T, in], states [L·D, H]
        x = x.unsqueeze(1)
        states = [s.unsqueeze(1) for s in states] if states is not None else None
    elif module.batch_first:
        x = x.transpose(0, 1)
    if states is None:
        zeros = torch.zeros(module.num_layers * directions, x.shape[1], hidden, dtype=x.dtype, device=x.device)
        states = [zeros, zeros] if kind is nn.LSTM else [zeros]
    wanted = [_GATE_MATRIX.fullmatch(a) for a in attrs]
    last = max(int(m.group(2)) for m in wanted)
    last_hh = max((int(m.group(2)) for m in wanted if m.group(1) == "hh"), default=-1)
    names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if module.bias else [])
    suffixes = ["", "_reverse"][:directions]
    rows: dict[str, torch.Tensor] = {}
    layer_input = x
    for k in range(last + 1):
        inputs = layer_input.reshape(-1, layer_input.shape[-1])
        for suffix in suffixes:
            rows[f"weight_ih_l{k}{suffix}"] = inputs      # one tensor: its moments are computed once
        if k == last and k > last_hh:
            break                                          # the outputs of this layer are not needed
        options = {"nonlinearity": module.nonlinearity} if kind is nn.RNN else {}
        single = kind(layer_input.shape[-1], hidden, num_layers=1, bias=module.bias, batch_first=False,
                      bidirectional=module.bidirectional, device="meta", **options)
        params = {f"{n}_l0{suffix}": getattr(module, f"{n}_l{k}{suffix}").detach()
                  for suffix in suffixes for n in names}  # detached: cuDNN's flattening re-points only the copies
        h0 = [s[k * directions:(k + 1) * directions] for s in states]
        output, _ = functional_call(single, params, (layer_input, tuple(h0) if kind is nn.LSTM else h0[0]))
        forward = output[..., :hidden]
        rows[f"weight_hh_l{k}"] = torch.cat([h0[0][0:1], forward[:-1]]).reshape(-1, hidden)
        if directions == 2:
            backward = output[..., hidden:]
            rows[f"weight_hh_l{k}_reverse"] = torch.cat([backward[1:], h0[0][1:2]]).reshape(-1, hidden)
        layer_input = output
    return {a: [rows[a]] for a in attrs}


def _attention_heads(module: nn.MultiheadAttention, arguments: dict[str, Any]) -> torch.Tensor:
    """The concatenated heads ``[n, E]`` that ``out_proj`` multiplied in one call.

    ``F.multi_head_attention_forward`` as ``nn.MultiheadAttention.forward`` calls it
    (the same parameters, masks and options, time-major), with the output projection
    replaced by the identity and no bias, so its output is the projection's input.
    """
    query, key, value = arguments["query"], arguments["key"], arguments["value"]
    if module.batch_first and query.dim() == 3:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    options: dict[str, Any] = {}
    if not module._qkv_same_embed_dim:
        options = {"use_separate_proj_weight": True, "q_proj_weight": module.q_proj_weight,
                   "k_proj_weight": module.k_proj_weight, "v_proj_weight": module.v_proj_weight}
    E = module.embed_dim
    identity = torch.eye(E, dtype=query.dtype, device=query.device)
    heads, _ = F.multi_head_attention_forward(
        query, key, value, E, module.num_heads, module.in_proj_weight, module.in_proj_bias,
        module.bias_k, module.bias_v, module.add_zero_attn, module.dropout, identity, None,
        training=module.training, key_padding_mask=arguments["key_padding_mask"],
        need_weights=arguments["need_weights"], attn_mask=arguments["attn_mask"],
        average_attn_weights=arguments["average_attn_weights"], is_causal=arguments["is_causal"], **options)
    return heads.reshape(-1, E)


def _attention_rows(module: nn.MultiheadAttention, args: tuple, kwargs: dict,
                    attrs: set[str]) -> dict[str, list[torch.Tensor]]:
    """The rows each projection ``attrs`` of an attention module multiplied in one call (per row block)."""
    bound = inspect.signature(nn.MultiheadAttention.forward).bind(module, *args, **kwargs)
    bound.apply_defaults()
    arguments = bound.arguments
    flat: dict[int, torch.Tensor] = {}

    def rows_of(name: str) -> torch.Tensor:
        t = arguments[name]
        if id(t) not in flat:                              # query is key is value: one tensor of rows
            flat[id(t)] = t.reshape(-1, t.shape[-1])
        return flat[id(t)]

    rows = {}
    for attr in attrs:
        if attr == "out_proj":
            rows[attr] = [_attention_heads(module, arguments)]
        else:
            rows[attr] = [rows_of(name) for name in _ATTENTION_INPUTS[attr]]
    return rows


def _inputs(batch: Any) -> Any:
    """The model's input of a batch: a tensor as is, an ``(x, y, …)`` tuple or list its first item."""
    if isinstance(batch, (tuple, list)):
        return batch[0]
    return batch


batch_inputs = _inputs  # the public name (BatchNorm re-estimation and bias correction use it)


def collect_statistics(
    model: nn.Module,
    batches: Iterable[Any],
    keys: Sequence[str] | None = None,
    max_batches: int | None = None,
    gram: bool = True,
) -> dict[str, Statistics]:
    """Input statistics of each covered weight tensor, from one pass over unlabeled batches.

    For each tensor ``W`` (rows = outputs) whose layer computes ``W X``, forward hooks
    stream ``H = Σ_n x_n x_nᵀ`` (float64), ``‖X_j‖² = H_jj`` and the sample count ``n``
    (see the module's docstring for what ``x_n`` is per layer type: the layer's input,
    a convolution's im2col patches, a recurrent layer's ``x_t`` and ``h_{t−1}``,
    attention's query/key/value and concatenated heads).  This is the
    Hessian of the layer-wise reconstruction loss ``‖W X − Ŵ X‖²`` of Optimal Brain
    Surgeon (Hassibi & Stork 1993) and SparseGPT (Frantar & Alistarh, ICML'23), and the
    input norms of Wanda (Sun, Liu, Bair, Kolter 2023).  The model runs in evaluation
    mode without gradients; its mode is restored afterwards, and the hooks are removed
    also on error.

    Args:
        model: any ``nn.Module``.
        batches: an iterable of batches: tensors, or ``(x, y)`` tuples whose labels are
            ignored.
        keys: the tensor keys of :func:`~efficientdl.core.tensors.compressible_tensors`
            to gather (``"fc1"``, ``"features.3"``, ``"lstm.weight_hh_l0"``,
            ``"attn.in_proj_weight"``); default: every covered one (:func:`is_covered`:
            the weights of ``nn.Linear`` and ``nn.Conv2d`` layers, recurrent gate
            matrices, attention projections).
        max_batches: stop after this many batches (default: all of them).
        gram: gather ``H``; ``False`` keeps only the column norms (``O(d)`` memory, enough
            for Wanda).

    Returns:
        ``{key: Statistics}``, in the order the layers first ran (execution order).

    Raises:
        RecipeError: a key names no covered tensor, the data gave no batches, a layer
            never ran on the calibration data, or a selected recurrent layer was called
            on a ``PackedSequence``.

    Example:
        >>> stats = collect_statistics(model, loader, max_batches=8)
        >>> stats["fc1"].gram.shape
        torch.Size([784, 784])
    """
    tensors = list(compressible_tensors(model))
    if keys is None:
        chosen = [t for t in tensors if is_covered(t, model)]
    else:
        by_key = {t.key: t for t in tensors}
        chosen = []
        for key in keys:
            t = by_key.get(key)
            if t is None:
                raise RecipeError(f"calibration: no weight tensor '{key}' "
                                  f"(known: {', '.join(by_key) or 'none'})")
            if not is_covered(t, model):
                raise RecipeError(f"calibration: '{key}' ({type(t.module).__name__}) is not covered: "
                                  "statistics are gathered for nn.Linear and nn.Conv2d weights, the gate "
                                  "matrices of nn.LSTM/nn.GRU/nn.RNN (without proj_size) and the projections "
                                  "of nn.MultiheadAttention only")
            chosen.append(t)
    accumulators: dict[str, _Accumulator] = {}
    # recurrent and attention tensors are fed by one hook on the module that runs (the
    # attention for its out_proj): {id: (module, rows function, [(key, attr), ...])}
    shared: dict[int, tuple[nn.Module, Any, list[tuple[str, str]]]] = {}
    plain = []
    for t in chosen:
        parent = _attention_parent(t, model)
        if parent is not None:
            module, rows_of, attr = parent, _attention_rows, "out_proj"
        elif isinstance(t.module, nn.MultiheadAttention):
            module, rows_of, attr = t.module, _attention_rows, t.attr
        elif _recurrent_type(t.module) is not None:
            module, rows_of, attr = t.module, _recurrent_rows, t.attr
        else:
            plain.append(t)
            continue
        shared.setdefault(id(module), (module, rows_of, []))[2].append((t.key, attr))

    def hook(key: str, module: nn.Module, inputs: tuple, output: Any) -> None:
        x = inputs[0]
        if isinstance(module, nn.Conv2d):
            out_hw = tuple(output.shape[-2:]) if isinstance(output, torch.Tensor) else None
            rows = _conv_patches(module, x, out_hw)
        else:
            rows = x.reshape(-1, x.shape[-1])
        if key not in accumulators:
            groups = module.groups if isinstance(module, nn.Conv2d) else 1
            accumulators[key] = _Accumulator(groups, gram)
        accumulators[key].add(rows)

    def shared_hook(rows_of: Any, entries: list[tuple[str, str]], module: nn.Module, args: tuple, kwargs: dict,
                    output: Any) -> None:
        rows = rows_of(module, args, kwargs, {attr for _, attr in entries})
        cache: dict[int, tuple] = {}
        for key, attr in entries:
            if key not in accumulators:
                accumulators[key] = _Accumulator(len(rows[attr]), gram)
            accumulators[key].add_parts(rows[attr], cache)

    handles = [t.module.register_forward_hook(lambda m, i, o, key=t.key: hook(key, m, i, o)) for t in plain]
    handles += [module.register_forward_hook(
        lambda m, a, k, o, rows_of=rows_of, entries=entries: shared_hook(rows_of, entries, m, a, k, o),
        with_kwargs=True) for module, rows_of, entries in shared.values()]
    was_training = model.training
    fastpath = torch.backends.mha.get_fastpath_enabled()
    seen = 0
    try:
        model.eval()
        # nn.TransformerEncoderLayer's inference fast path runs its attention and linear
        # layers in one fused kernel without calling their forward (and so their hooks)
        torch.backends.mha.set_fastpath_enabled(False)
        with torch.no_grad():
            for batch in batches:
                if max_batches is not None and seen >= max_batches:
                    break
                model(_inputs(batch))
                seen += 1
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if seen == 0:
        raise RecipeError("calibration: the data gave no batches")
    for t in chosen:
        if t.key not in accumulators:
            raise RecipeError(f"calibration: layer '{t.key}' never ran on the calibration data")
    return {key: acc.result() for key, acc in accumulators.items()}


def calibration_samples(batches: Iterable[Any], samples: int) -> list[torch.Tensor]:
    """The inputs of the first ``samples`` samples of a loader, labels dropped.

    What "N unlabeled calibration samples" means everywhere (the recipe's
    ``calibration: N``, the benchmarks): batches are taken in the loader's order (a
    shuffled training loader gives a random subset) and the last one is cut so that
    exactly ``samples`` inputs are kept, or all of them when the loader has fewer.

    Args:
        batches: an iterable of tensors or ``(x, y, …)`` batches.
        samples: how many inputs to keep, ``≥ 1``.

    Returns:
        The input batches (tensors along dimension 0), re-iterable.

    Raises:
        RecipeError: ``samples < 1`` or the loader gave no batches.
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise RecipeError(f"calibration: the number of samples must be a positive integer, got {samples!r}")
    kept: list[torch.Tensor] = []
    count = 0
    for batch in batches:
        x = batch_inputs(batch)
        if not isinstance(x, torch.Tensor):
            raise RecipeError(f"calibration: a batch's input is a {type(x).__name__}, not a tensor")
        x = x[:samples - count]
        kept.append(x)
        count += x.shape[0]
        if count >= samples:
            break
    if not kept:
        raise RecipeError("calibration: the data gave no batches")
    return kept
