"""Runtime layers that compute straight from the compressed form (EIE, Han et al. ISCA'16).

:class:`CompressedLinear` and :class:`CompressedConv2d` hold a pruned, weight-shared
weight only as sparse structure + small cluster indices + a codebook (the layout of
:mod:`efficientdl.kernels.cpu`) and never materialise the dense matrix:

* ``CompressedLinear``:  ``y = x Wᵀ + b`` computed as ``(W xᵀ)ᵀ`` by the sparse kernel,
  skipping pruned weights and zero activations;
* ``CompressedConv2d``:  im2col lowering — ``unfold(x)`` gives the ``(C·kh·kw, L)``
  patch matrix of each image, and ``y = W_flat · patches`` runs on the same kernel
  (zero pixels after a ReLU are zero activations too).

The layers are inference-only (no gradient flows to the codebook).  On a CUDA tensor
the GPU kernel of :mod:`efficientdl.kernels.gpu` is used when Triton is available.

:func:`to_runtime` swaps the weight-shared ``nn.Linear``/``nn.Conv2d`` layers of a
decoded model for these, given their cluster indices and codebooks.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.parametrize import replace_module
from ..core.state import attach_input_quantizer, input_spec
from ..errors import ModelError
from ..kernels import cpu

_FLOAT_DTYPES = (torch.float32, torch.float64)


def _signed_view(entries: np.ndarray) -> np.ndarray:
    """Entries as signed integers of the same width (torch's widely supported dtypes)."""
    return entries.view({1: np.int8, 2: np.int16, 4: np.int32}[entries.itemsize])


class _PackedWeight(nn.Module):
    """Shared base: the packed matrix as buffers (so ``.to(device)`` moves it) + the kernels."""

    def _set_packed(self, codes: np.ndarray, codebook: np.ndarray, bias: torch.Tensor | None,
                    partitions: int) -> None:
        m = cpu.pack(codes, codebook, partitions)
        twin = cpu.pack_rows(codes, codebook)
        self.shape = m.shape
        self.code_bits = m.code_bits
        self.register_buffer("row_start", torch.from_numpy(m.row_start))
        self.register_buffer("colptr", torch.from_numpy(m.colptr))
        self.register_buffer("entries", torch.from_numpy(_signed_view(m.entries)))
        self.register_buffer("codebook", torch.from_numpy(m.codebook))
        self.register_buffer("rowptr", torch.from_numpy(twin.colptr[0].copy()))
        self.register_buffer("row_entries", torch.from_numpy(_signed_view(twin.entries)))
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32).clone())
        self._entry_dtypes = (m.entries.dtype, twin.entries.dtype)
        self._twin_lookup = twin.absolute
        self._packed = (m, twin) if self.entries.device.type == "cpu" else None
        self._bias_view = None
        self._gpu_cache = None

    def _apply(self, fn, *args, **kwargs):
        self._packed, self._gpu_cache = None, None      # buffers may have moved: rebuild views lazily
        self._bias_view = None
        return super()._apply(fn, *args, **kwargs)

    def _layouts(self) -> tuple[cpu.PackedMatrix, cpu.PackedMatrix]:
        if self._packed is not None:
            return self._packed
        codebook = self.codebook.cpu().numpy()
        m = cpu.PackedMatrix(self.shape, self.row_start.cpu().numpy(), self.colptr.cpu().numpy(),
                             self.entries.cpu().numpy().view(self._entry_dtypes[0]), self.code_bits, codebook)
        twin = cpu.PackedMatrix((self.shape[1], self.shape[0]), np.array([0, self.shape[1]], np.int64),
                                self.rowptr.cpu().numpy()[None, :],
                                self.row_entries.cpu().numpy().view(self._entry_dtypes[1]), self.code_bits, codebook,
                                absolute=self._twin_lookup)
        if self.entries.device.type == "cpu":
            self._packed = (m, twin)
        return m, twin

    def packed(self) -> cpu.PackedMatrix:
        """The weight in the CPU kernel's column layout (views of the CPU buffers, no copy)."""
        return self._layouts()[0]

    def weight_bytes(self) -> int:
        """Resident bytes of the weight in memory: both layouts (column-partitioned for sparse
        activations, row-major twin for dense activations and batches) and the codebook."""
        return sum(t.numel() * t.element_size() for t in (self.row_start, self.colptr, self.entries, self.codebook,
                                                          self.rowptr, self.row_entries))

    def dense_weight_bytes(self) -> int:
        """Bytes the same weight takes as a dense fp32 matrix."""
        return 4 * self.shape[0] * self.shape[1]

    def dense_weight(self) -> torch.Tensor:
        """The dense weight matrix ``(rows, cols)`` (for checks only; the layer never uses it)."""
        codes = cpu.unpack(self.packed())
        return torch.from_numpy(self.codebook.cpu().numpy()[codes])

    def _matmul_cols(self, x_cols: torch.Tensor) -> torch.Tensor:
        """``W · x_cols`` for ``x_cols`` of shape ``(cols,)`` or ``(cols, N)``."""
        if x_cols.is_cuda:
            from ..kernels import gpu

            if self._gpu_cache is None or self._gpu_cache.device != x_cols.device:
                self._gpu_cache = gpu.GpuPackedMatrix.from_packed(self.packed(), x_cols.device)
            return gpu.matmul(self._gpu_cache, x_cols)
        if x_cols.dtype not in _FLOAT_DTYPES:
            raise ModelError(f"compressed layer needs float32 or float64 input on the CPU, got {x_cols.dtype}")
        m, twin = self._layouts()
        y = cpu.matmul(m, x_cols.detach().contiguous().numpy(), twin=twin)
        return torch.from_numpy(y)


class CompressedLinear(_PackedWeight):
    """``nn.Linear`` computed from its pruned, weight-shared form.

    Args:
        codes: integer ``(out_features, in_features)`` cluster indices, 0 = pruned.
        codebook: float ``(K,)`` shared values with ``codebook[0] == 0``.
        bias: optional ``(out_features,)``.
        partitions: row partitions (threads) of the kernel; 0 = numba's thread count.

    Example::

        layer = CompressedLinear(codes, codebook, bias)
        y = layer(x)            # x: (..., in_features) float32
    """

    def __init__(self, codes: np.ndarray, codebook: np.ndarray, bias: torch.Tensor | None = None,
                 partitions: int = 0) -> None:
        super().__init__()
        codes = np.asarray(codes)
        if codes.ndim != 2:
            raise ModelError(f"CompressedLinear needs 2-D codes, got shape {codes.shape}")
        self.out_features, self.in_features = codes.shape
        if bias is not None and tuple(bias.shape) != (self.out_features,):
            raise ModelError(f"bias shape {tuple(bias.shape)} does not match {self.out_features} outputs")
        self._set_packed(codes, codebook, bias, partitions)

    @classmethod
    def from_linear(cls, layer: nn.Linear, codes: np.ndarray, codebook: np.ndarray,
                    partitions: int = 0) -> "CompressedLinear":
        """Build from a decoded ``nn.Linear`` (its bias) and the file's indices and codebook."""
        if tuple(codes.shape) != tuple(layer.weight.shape):
            raise ModelError(f"codes shape {tuple(codes.shape)} does not match weight {tuple(layer.weight.shape)}")
        return cls(codes, codebook, layer.bias, partitions)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ModelError(f"CompressedLinear expects (..., {self.in_features}) input, got {tuple(x.shape)}")
        if x.dim() == 2 and x.shape[0] == 1 and x.dtype in _FLOAT_DTYPES and not x.is_cuda:
            return self._forward_one(x)
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.in_features)
        if flat.shape[0] == 1:
            y = self._matmul_cols(flat[0]).unsqueeze(0)
        else:
            y = self._matmul_cols(flat.t().contiguous()).t()
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*lead, self.out_features)

    def _forward_one(self, x: torch.Tensor) -> torch.Tensor:
        """One CPU sample ``(1, in_features)``: the bias is added in numpy and the result
        wrapped without copies.  Each torch operation costs about a microsecond, which on
        LeNet-300-100's small layers was as much as the product (measured: 11–16 µs per
        layer through the general path, of which the kernel took 2–7 µs)."""
        m, twin = self._layouts()
        y = cpu.matmul(m, x.detach().numpy()[0] if x.is_contiguous() else x.detach().contiguous().numpy()[0],
                       twin=twin)
        if self.bias is not None:
            y += self._bias_numpy()
        return torch.from_numpy(y.reshape(1, -1))

    def _bias_numpy(self) -> np.ndarray:
        if self._bias_view is None or self._bias_view[0] is not self.bias:
            self._bias_view = (self.bias, self.bias.detach().cpu().numpy())
        return self._bias_view[1]

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, code_bits={self.code_bits}")


class CompressedConv2d(_PackedWeight):
    """``nn.Conv2d`` (groups = 1, zero padding) computed from its compressed form by im2col.

    Args:
        codes: integer ``(out_channels, in_channels, kh, kw)`` cluster indices, 0 = pruned.
        codebook: float ``(K,)`` with ``codebook[0] == 0``.
        bias: optional ``(out_channels,)``.
        stride, padding, dilation: as ``nn.Conv2d``.
        partitions: row partitions (threads) of the kernel; 0 = numba's thread count.
    """

    def __init__(self, codes: np.ndarray, codebook: np.ndarray, bias: torch.Tensor | None = None,
                 stride=1, padding=0, dilation=1, partitions: int = 0) -> None:
        super().__init__()
        codes = np.asarray(codes)
        if codes.ndim != 4:
            raise ModelError(f"CompressedConv2d needs 4-D codes, got shape {codes.shape}")
        self.out_channels, self.in_channels, kh, kw = codes.shape
        self.kernel_size = (kh, kw)
        pair = nn.modules.utils._pair
        self.stride, self.padding, self.dilation = pair(stride), pair(padding), pair(dilation)
        if bias is not None and tuple(bias.shape) != (self.out_channels,):
            raise ModelError(f"bias shape {tuple(bias.shape)} does not match {self.out_channels} output channels")
        self._set_packed(codes.reshape(self.out_channels, -1), codebook, bias, partitions)

    @classmethod
    def from_conv(cls, layer: nn.Conv2d, codes: np.ndarray, codebook: np.ndarray,
                  partitions: int = 0) -> "CompressedConv2d":
        """Build from a decoded ``nn.Conv2d`` (its geometry and bias) and the file's indices and codebook."""
        if not supports(layer):
            raise ModelError("CompressedConv2d supports groups=1, zero padding and numeric padding only")
        if tuple(codes.shape) != tuple(layer.weight.shape):
            raise ModelError(f"codes shape {tuple(codes.shape)} does not match weight {tuple(layer.weight.shape)}")
        return cls(codes, codebook, layer.bias, layer.stride, layer.padding, layer.dilation, partitions)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() not in (3, 4) or x.shape[-3] != self.in_channels:
            raise ModelError(f"CompressedConv2d expects (N, {self.in_channels}, H, W) input, got {tuple(x.shape)}")
        single = x.dim() == 3
        if single:
            x = x.unsqueeze(0)
        n, _, h, w = x.shape
        kh, kw = self.kernel_size
        out_h = (h + 2 * self.padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        out_w = (w + 2 * self.padding[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        if out_h < 1 or out_w < 1:
            raise ModelError(f"input {h}×{w} is smaller than the {kh}×{kw} kernel")
        patches = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # (N, C·kh·kw, L)
        cols = patches.permute(1, 0, 2).reshape(patches.shape[1], -1).contiguous()      # (C·kh·kw, N·L)
        y = self._matmul_cols(cols).reshape(self.out_channels, n, out_h, out_w).permute(1, 0, 2, 3)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype).view(1, -1, 1, 1)
        y = y.contiguous()
        return y[0] if single else y

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, bias={self.bias is not None}, "
                f"code_bits={self.code_bits}")


def supports(layer: nn.Module) -> bool:
    """Whether :func:`to_runtime` can replace ``layer`` by a compressed runtime layer."""
    if type(layer) is nn.Linear:
        return True
    if type(layer) is nn.Conv2d:
        return (layer.groups == 1 and layer.padding_mode == "zeros" and not isinstance(layer.padding, str))
    return False


def to_runtime(model: nn.Module, codebooks: dict[str, tuple[np.ndarray, np.ndarray]],
               partitions: int = 0) -> tuple[nn.Module, list[str], list[str]]:
    """Replace the weight-shared layers of a decoded model by compressed runtime layers.

    Args:
        model: a decoded dense model (its weights as in the file).
        codebooks: ``{"<module>.weight": (codes, codebook)}`` — per-element cluster
            indices (0 = pruned) and the codebook with entry 0 = 0 (as
            :class:`efficientdl.format.Container` gives them).
        partitions: kernel row partitions; 0 = numba's thread count.

    Returns:
        ``(model, converted, kept)``: the model (modified in place), the names of the
        layers now computed from compressed form, and of weight-shared tensors whose
        module could not be converted (left dense).
    """
    converted, kept = [], []
    modules = dict(model.named_modules())
    for tensor_name, (codes, codebook) in codebooks.items():
        module_name, _, attr = tensor_name.rpartition(".")
        layer = modules.get(module_name)
        if attr != "weight" or layer is None or not supports(layer):
            kept.append(tensor_name)
            continue
        if not module_name:
            raise ModelError("the model itself is a single layer; wrap it in a container module")
        if isinstance(layer, nn.Linear):
            new = CompressedLinear.from_linear(layer, codes, codebook, partitions)
        else:
            new = CompressedConv2d.from_conv(layer, codes, codebook, partitions)
        spec = input_spec(layer)
        if spec is not None:            # the layer's activation quantizer comes along
            attach_input_quantizer(new, spec)
        replace_module(model, module_name, new)
        converted.append(module_name)
    return model.eval(), converted, kept


def runtime_memory(model: nn.Module) -> list[dict]:
    """Resident weight memory of each compressed runtime layer vs its dense fp32 weight.

    Returns:
        One dict per layer: ``name``, ``shape``, ``weight_bytes``, ``dense_bytes``,
        ``ratio`` (dense / resident), ``entries``, ``entry_bits``, ``partitions``.
    """
    out = []
    for name, m in model.named_modules():
        if isinstance(m, _PackedWeight):
            out.append({"name": name, "shape": list(m.shape), "weight_bytes": m.weight_bytes(),
                        "dense_bytes": m.dense_weight_bytes(),
                        "ratio": m.dense_weight_bytes() / max(1, m.weight_bytes()),
                        "entries": int(m.entries.numel()), "entry_bits": 8 * m.entries.element_size(),
                        "row_entry_bits": 8 * m.row_entries.element_size(),
                        "partitions": int(m.row_start.numel() - 1)})
    return out
