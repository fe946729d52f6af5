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

Not covered (their tensors are skipped by ``keys=None`` and refused when named):
recurrent gate matrices (``nn.LSTM``/``nn.GRU``/``nn.RNN``: their inputs ``x_t`` and
``h_{t−1}`` are inside the fused kernel), attention's ``in_proj_weight`` and the
``out_proj`` of ``nn.MultiheadAttention`` (called through ``F.multi_head_attention_forward``,
never through its own ``forward``), embeddings, ``Conv1d``/``Conv3d`` and matrices
registered directly on custom modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..core.tensors import WeightTensor, compressible_tensors
from ..errors import RecipeError


@dataclass
class Statistics:
    """Calibration statistics of the inputs of one weight tensor.

    Attributes:
        count: number of sample vectors ``n`` (columns of ``X``).
        gram: ``H = X Xᵀ`` in float64, ``[d, d]``; for a grouped convolution one per
            group, ``[g, d_g, d_g]``; ``None`` when collected with ``gram=False``.
        sq_norms: the column squared norms ``‖X_j‖²`` (the diagonal of ``H``), ``[d]``
            or ``[g, d_g]``, float64.
        groups: the convolution's groups (1 for a linear layer).
        sums: the column sums ``Σ_n x_n``, the shape of :attr:`sq_norms`, float64.
    """

    count: int
    gram: torch.Tensor | None
    sq_norms: torch.Tensor
    groups: int = 1
    sums: torch.Tensor | None = None

    @property
    def mean(self) -> torch.Tensor:
        """The mean input ``E[x] = Σ_n x_n / n``, the shape of :attr:`sq_norms`."""
        if self.sums is None:
            raise RecipeError("calibration: the statistics hold no input sums")
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


def is_covered(tensor: WeightTensor, model: nn.Module | None = None) -> bool:
    """Whether :func:`collect_statistics` can gather the inputs of ``tensor``.

    Args:
        tensor: a tensor of :func:`~efficientdl.core.tensors.compressible_tensors`.
        model: the model, to recognise ``out_proj`` of ``nn.MultiheadAttention`` (its
            forward never runs); without it such a layer counts as covered.

    Returns:
        ``True`` for the ``weight`` of an ``nn.Linear`` or ``nn.Conv2d`` (subclasses too).
    """
    if tensor.attr != "weight" or not isinstance(tensor.module, (nn.Linear, nn.Conv2d)):
        return False
    if model is not None and tensor.module_name:
        parent_name = tensor.module_name.rpartition(".")[0]
        parent = model.get_submodule(parent_name) if parent_name else model
        if isinstance(parent, nn.MultiheadAttention):
            return False
    return True


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


class _Accumulator:
    """Streams ``H += Xᵀ X`` (or only the column squared norms) for one layer."""

    def __init__(self, groups: int, gram: bool):
        self.groups, self.with_gram = groups, gram
        self.count = 0
        self.gram: torch.Tensor | None = None
        self.sq: torch.Tensor | None = None
        self.sums: torch.Tensor | None = None

    def add(self, rows: torch.Tensor) -> None:
        x = rows.detach().to(torch.float64)
        g = self.groups
        if g > 1:
            x = x.reshape(x.shape[0], g, -1).transpose(0, 1)  # [g, n, d_g]
        if self.sq is None:
            self.sq = torch.zeros(x.shape[:-2] + x.shape[-1:], dtype=torch.float64, device=x.device)
            self.sums = torch.zeros_like(self.sq)
            if self.with_gram:
                self.gram = torch.zeros(x.shape[:-2] + (x.shape[-1], x.shape[-1]), dtype=torch.float64,
                                        device=x.device)
        self.sq += (x * x).sum(dim=-2)
        self.sums += x.sum(dim=-2)
        if self.with_gram:
            self.gram += x.transpose(-1, -2) @ x
        self.count += rows.shape[0]

    def result(self) -> Statistics:
        return Statistics(self.count, self.gram, self.sq, self.groups, self.sums)


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
    (see the module's docstring for what ``x_n`` is per layer type).  This is the
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
            to gather (``"fc1"``, ``"features.3"``); default: every covered one
            (:func:`is_covered`: the weights of ``nn.Linear`` and ``nn.Conv2d`` layers).
        max_batches: stop after this many batches (default: all of them).
        gram: gather ``H``; ``False`` keeps only the column norms (``O(d)`` memory, enough
            for Wanda).

    Returns:
        ``{key: Statistics}``, in the order the layers first ran (execution order).

    Raises:
        RecipeError: a key names no covered tensor, the data gave no batches, or a
            layer never ran on the calibration data.

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
                                  "statistics are gathered for nn.Linear and nn.Conv2d weights only")
            chosen.append(t)
    accumulators: dict[str, _Accumulator] = {}

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

    handles = [t.module.register_forward_hook(lambda m, i, o, key=t.key: hook(key, m, i, o)) for t in chosen]
    was_training = model.training
    seen = 0
    try:
        model.eval()
        with torch.no_grad():
            for batch in batches:
                if max_batches is not None and seen >= max_batches:
                    break
                model(_inputs(batch))
                seen += 1
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if seen == 0:
        raise RecipeError("calibration: the data gave no batches")
    for t in chosen:
        if t.key not in accumulators:
            raise RecipeError(f"calibration: layer '{t.key}' never ran on the calibration data")
    return {key: acc.result() for key, acc in accumulators.items()}
