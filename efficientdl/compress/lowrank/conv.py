"""Low-rank decomposition of convolutions by truncated SVD of the reshaped kernel.

A ``k_h × k_w`` convolution ``C → N`` with kernel ``W[n, c, i, j]`` becomes two
convolutions through ``r`` intermediate channels, chosen by one of two schemes:

* **spatial** (Jaderberg, Vedaldi & Zisserman, "Speeding up Convolutional Neural Networks
  with Low Rank Expansions", BMVC 2014, scheme 2): a vertical ``k_h × 1`` convolution
  ``C → r`` followed by a horizontal ``1 × k_w`` convolution ``r → N``.  The kernel read
  as the matrix ``M[(c, i), (n, j)]`` of size ``(C k_h) × (N k_w)`` has the SVD
  ``M = U Σ Vᵀ``, and ``V_r[r, c, i] = U[(c, i), r] √σ_r``, ``H[n, r, j] = √σ_r Vᵀ[r, (n, j)]``
  give ``W[n, c, i, j] ≈ Σ_r H[n, r, j] V_r[r, c, i]``.  Weights: ``r (C k_h + N k_w)``
  instead of ``C N k_h k_w``.
* **channel** (Zhang, Zou, He & Sun, "Efficient and Accurate Approximations of Nonlinear
  Convolutional Networks", CVPR 2015): a ``k_h × k_w`` convolution ``C → r`` followed by a
  ``1 × 1`` convolution ``r → N``, from the SVD of ``M[n, (c, i, j)]`` of size
  ``N × (C k_h k_w)``.  Weights: ``r (C k_h k_w + N)``.  This is the data-free form: the
  paper minimises the error of the layer's *responses* on training data (and through the
  non-linearity, by generalised SVD); here the kernel itself is approximated, which is the
  paper's starting point and needs no data.

Both are exact at full rank (``r = min`` of the matrix sides) because a convolution is
linear in its kernel and the first convolution has no bias (the bias moves to the second).
Stride, padding, dilation and padding mode are split between the two convolutions: the
vertical one takes the row parts and the horizontal one the column parts (spatial), or the
first takes them all and the ``1 × 1`` none (channel).  Zero, reflect, replicate and
circular padding are separable by rows and columns, so the split is exact.  By
Eckart–Young the error is exactly the discarded spectrum,
``‖W − W_r‖_F² = Σ_{i>r} σ_i²``, and the rank is chosen as in :func:`.lowrank.choose_rank`
(with the matrix sides as in/out features, whose parameter count ``r (rows + cols)``
is that of the two convolutions).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn

from ...errors import RecipeError
from ..transforms import record_transform, register_transform
from ..layers import check_spec_keys, layer_setting, replace_module, select_layers
from .svd import choose_rank
from ..macs import conv2d_macs, layer_io_shapes, sequential_conv_macs

SCHEMES = ("spatial", "channel")


def conv_matrix(weight: torch.Tensor, scheme: str) -> torch.Tensor:
    """The kernel ``W (N, C, k_h, k_w)`` read as the matrix the scheme factorises.

    Args:
        weight: a convolution kernel.
        scheme: ``"spatial"`` → ``M[(c, i), (n, j)]`` of ``(C k_h) × (N k_w)``;
            ``"channel"`` → ``M[n, (c, i, j)]`` of ``N × (C k_h k_w)``.

    Returns:
        The matrix (a reshaped copy, same dtype).
    """
    n, c, kh, kw = weight.shape
    if scheme == "spatial":
        return weight.permute(1, 2, 0, 3).reshape(c * kh, n * kw)
    return weight.reshape(n, c * kh * kw)


def _split(value: Any, first: bool, neutral: int) -> Any:
    """The row part (``first``) or column part of a pair-valued conv argument; strings as they are."""
    if isinstance(value, str):
        return value
    return (value[0], neutral) if first else (neutral, value[1])


def decompose_conv(conv: nn.Conv2d, scheme: str, rank: int | None = None, energy: float | None = None,
                   reduction: float | None = None, input_hw: Sequence[int] | None = None,
                   name: str = "conv") -> tuple[nn.Sequential, dict]:
    """Replace ``conv`` by two convolutions through ``r`` channels (see the module docstring).

    Args:
        conv: an ``nn.Conv2d`` with ``groups = 1``.
        scheme: ``"spatial"`` (``k_h×1`` then ``1×k_w``) or ``"channel"`` (``k_h×k_w`` to
            ``r`` channels then ``1×1``).
        rank, energy, reduction: exactly one rank criterion (see :func:`.lowrank.choose_rank`).
        input_hw: the layer's input ``(H, W)`` in pixels, to count MACs (None: not counted).
        name: the layer's name in error messages and the report.

    Returns:
        ``(nn.Sequential(first, second), info)``; ``info`` holds ``scheme``, ``rank``,
        ``full_rank``, ``params_before`` / ``params_after`` (kernel weights, biases not
        counted), ``macs_before`` / ``macs_after`` (per sample, None without ``input_hw``),
        ``frobenius_error`` ``= √(Σ_{i>r} σ_i²)`` and ``discarded_energy``
        ``= Σ_{i>r} σ_i² / Σ σ_i²``.

    Raises:
        RecipeError: an unknown scheme, a grouped convolution, or a bad rank criterion.
    """
    if scheme not in SCHEMES:
        raise RecipeError(f"conv low rank: layer '{name}': unknown scheme {scheme!r} (expected spatial or channel)")
    if type(conv) is not nn.Conv2d:
        raise RecipeError(f"conv low rank: layer '{name}' is a {type(conv).__name__}, not an nn.Conv2d")
    if conv.groups != 1:
        raise RecipeError(f"conv low rank: layer '{name}' is a grouped convolution (groups={conv.groups}); "
                          "only groups=1 can be decomposed")
    n, c, kh, kw = conv.weight.shape
    u, s, vh = torch.linalg.svd(conv_matrix(conv.weight.detach().double(), scheme), full_matrices=False)
    rows, cols = u.shape[0], vh.shape[1]
    r = choose_rank(s, rows, cols, rank, energy, reduction)
    root = s[:r].sqrt()
    left, right = u[:, :r] * root, root[:, None] * vh[:r]          # M ≈ left @ right
    like = {"device": conv.weight.device, "dtype": conv.weight.dtype}
    common = {"padding_mode": conv.padding_mode, **like}
    if scheme == "spatial":
        first = nn.Conv2d(c, r, (kh, 1), stride=_split(conv.stride, True, 1), padding=_split(conv.padding, True, 0),
                          dilation=_split(conv.dilation, True, 1), bias=False, **common)
        second = nn.Conv2d(r, n, (1, kw), stride=_split(conv.stride, False, 1), padding=_split(conv.padding, False, 0),
                           dilation=_split(conv.dilation, False, 1), bias=conv.bias is not None, **common)
        first_weight = left.t().reshape(r, c, kh, 1)
        second_weight = right.reshape(r, n, kw).permute(1, 0, 2).reshape(n, r, 1, kw)
    else:
        first = nn.Conv2d(c, r, (kh, kw), stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                          bias=False, **common)
        second = nn.Conv2d(r, n, 1, bias=conv.bias is not None, **like)
        first_weight = right.reshape(r, c, kh, kw)
        second_weight = left.reshape(n, r, 1, 1)
    with torch.no_grad():
        first.weight.copy_(first_weight)
        second.weight.copy_(second_weight)
        if conv.bias is not None:
            second.bias.copy_(conv.bias)
    new = nn.Sequential(first, second)
    discarded = float((s[r:] ** 2).sum())
    info = {"scheme": scheme, "rank": r, "full_rank": min(rows, cols), "params_before": conv.weight.numel(),
            "params_after": r * (rows + cols),
            "macs_before": conv2d_macs(conv, input_hw) if input_hw is not None else None,
            "macs_after": sequential_conv_macs(new, input_hw) if input_hw is not None else None,
            "frobenius_error": math.sqrt(discarded), "discarded_energy": discarded / float((s ** 2).sum())}
    return new, info


def _input_sizes(model: nn.Module, convs: list[tuple[str, nn.Module]], input_shape: Sequence[int] | None) -> dict:
    """``{name: (H, W)}`` of the convolutions' inputs on one zero sample of ``input_shape``
    (default: ``(in_channels, input_size, input_size)`` from the model's ``edl_arch``)."""
    if input_shape is None:
        kwargs = (getattr(model, "edl_arch", None) or {}).get("kwargs", {})
        if "input_size" not in kwargs:
            return {}
        input_shape = (kwargs.get("in_channels", 1), kwargs["input_size"], kwargs["input_size"])
    shapes = layer_io_shapes(model, input_shape, convs)
    return {name: in_shape[-2:] for name, (in_shape, _) in shapes.items()}


def conv_low_rank(model: nn.Module, scheme: Any, rank: Any = None, energy: Any = None, reduction: Any = None,
                  layers: list[str] | None = None,
                  input_shape: Sequence[int] | None = None) -> tuple[nn.Module, dict[str, dict]]:
    """Decompose the convolutions of ``model`` (in place) into two low-rank convolutions.

    Args:
        model: any ``nn.Module``.
        scheme: ``"spatial"`` or ``"channel"`` (see the module docstring), one for all
            layers or a per-layer mapping.
        rank, energy, reduction: one rank criterion, as one number or a per-layer mapping
            (layer names, ``"Conv2d"`` or ``"default"``; a layer whose setting is None is kept).
        layers: only these layer names (default: every ``nn.Conv2d``).
        input_shape: one sample's ``(C, H, W)`` for the MAC counts (default: from the
            model's ``edl_arch``; without either, MACs are reported as None).

    Returns:
        ``(model, {layer name: info})`` (see :func:`decompose_conv`).  Scheme and rank of
        each layer are recorded in ``model.edl_arch["transforms"]`` so that a saved file
        rebuilds the decomposed structure.

    Raises:
        RecipeError: a layer name that is not a convolution of the model, a grouped
            convolution, an unknown scheme or a bad rank criterion.
    """
    for what, spec in (("scheme", scheme), ("rank", rank), ("energy", energy), ("reduction", reduction)):
        check_spec_keys(spec, model, f"conv low rank {what}")
    convs = select_layers(model, nn.Conv2d, layers, "conv low rank")
    chosen = []
    for name, conv in convs:
        settings = {k: layer_setting(v, name, conv, k)
                    for k, v in (("rank", rank), ("energy", energy), ("reduction", reduction))}
        layer_scheme = layer_setting(scheme, name, conv, "scheme")
        if layer_scheme is not None and any(v is not None for v in settings.values()):
            chosen.append((name, conv, layer_scheme, settings))
    sizes = _input_sizes(model, [(name, conv) for name, conv, _, _ in chosen], input_shape) if chosen else {}
    report = {}
    for name, conv, layer_scheme, settings in chosen:
        new, info = decompose_conv(conv, layer_scheme, **settings, input_hw=sizes.get(name), name=name)
        replace_module(model, name, new)
        report[name] = info
    if report:
        record_transform(model, "conv_lowrank", layers={name: {"scheme": info["scheme"], "rank": info["rank"]}
                                                        for name, info in report.items()})
    return model, report


@register_transform("conv_lowrank")
def _replay_conv_low_rank(model: nn.Module, layers: dict[str, dict]) -> None:
    """Rebuild the decomposed convolutions of :func:`conv_low_rank` (their weights come from the file)."""
    conv_low_rank(model, scheme={name: str(v["scheme"]) for name, v in layers.items()},
                  rank={name: int(v["rank"]) for name, v in layers.items()}, layers=list(layers))
