"""The compressed file (``.edlz``): the only code that knows its bytes.

Layout, all integers little-endian::

    offset 0   magic      b"EDLZ"
           4   version    u16   (FORMAT_VERSION)
           6   reserved   u16   (0)
           8   header_len u32   length of the compressed header
          12   header_crc u32   CRC-32 of the compressed header bytes
          16   header     zlib-compressed UTF-8 JSON (see below)
    16+header_len  blob   the sections, back to back

The JSON header holds the architecture reference (registry name and constructor
arguments), free-form metadata, the activation quantizers, and one record per tensor
with its name, kind, shape, dtype, coding parameters and its sections as
``[offset, length, crc32]`` relative to the blob.  The sections tile the blob exactly:
the file ends where its last section ends.

Tensor kinds, one class each in :mod:`efficientdl.format.kinds` (which documents each
byte layout): ``dense`` (the raw array), ``sparse`` (pruned: relative indices and
float32 values), ``shared`` (pruned + weight-shared: relative indices, codebook
indices, centroids), ``codes`` (weight-shared: a codebook index per element),
``quant`` (linearly quantized: an integer code per element and the quantizer) and
``alias`` (a tied parameter's further name, no data).  Index and value streams are
Huffman coded or packed at fixed width (:mod:`efficientdl.format.streams`).

Version policy: FORMAT_VERSION 1; a reader loads every older version; a new version
adds golden files of its own (``tests/data/golden/``) and keeps the old ones.

Nothing is ever unpickled: loading parses JSON and numeric arrays only.  The torch-free
part (prefix, header, section table, :func:`info`) is :mod:`efficientdl.format.layout`;
this module adds what needs torch: models in, models and tensors out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from ..core import files
from ..core.parametrize import plain_state_dict
from ..core.state import (QuantSpec, WeightQuantizer, attach_input_quantizer, renew_weight_claims, input_spec,
                          integer_codes, shared_weight, weight_mask, weight_spec)
from ..core.tensors import compressible_tensors, layer_type, tensor_setting, tied_parameters
from ..errors import FormatError, ModelError
from ..report.results import LayerRecord
from .kinds import ALIAS, DENSE, MAX_INDEX_BITS, NUMPY_DTYPES, TensorInfo, encode_tensor, inferred_codebook
from .layout import FORMAT_VERSION, MAGIC, PREFIX, header_bytes, info, is_container, read_bytes, read_records
from .streams import CODINGS, Writer

__all__ = ["FORMAT_VERSION", "MAGIC", "PREFIX", "RUNTIMES", "Container", "atomic_write", "decode", "encode", "info",
           "is_container", "load", "load_into", "read", "save"]

DEFAULT_INDEX_BITS = {"Conv2d": 8, "Linear": 5}
TORCH_DTYPES = {name: getattr(torch, name) for name in NUMPY_DTYPES}
TORCH_TO_NAME = {t: name for name, t in TORCH_DTYPES.items()}


# --------------------------------------------------------------------------- writing
def _tensor_info(name: str, t: torch.Tensor, **kwargs: Any) -> TensorInfo:
    """What the kinds need to know of ``t``: its values as a numpy array and its settings."""
    if t.dtype not in TORCH_TO_NAME:
        raise ModelError(f"tensor '{name}' has dtype {t.dtype}, which the file cannot store")
    return TensorInfo(name, t.detach().cpu().contiguous().numpy(), TORCH_TO_NAME[t.dtype], **kwargs)


def encode(
    model: nn.Module,
    index_bits: Any = None,
    coding: str = "huffman",
    arch: dict | None = None,
    meta: dict | None = None,
    infer_shared: bool = True,
    shared_layout: str = "smaller",
) -> tuple[bytes, list[LayerRecord]]:
    """Encode a model into the bytes of a compressed file.

    Each compressible weight is stored as the first kind of
    :data:`~efficientdl.format.kinds.ENCODE_ORDER` that accepts it: ``quant`` when it
    carries a weight quantizer; ``shared`` or ``codes`` (the smaller, or as
    ``shared_layout`` says) when it carries a weight-sharing parametrization (or, with
    ``infer_shared``, holds at most 255 distinct nonzero values, as a weight-shared
    checkpoint does); ``sparse`` when it is pruned (a mask, or at most half its entries
    nonzero); else ``dense``.  A tensor whose values take fewer bytes stored plainly —
    ``dense`` or ``sparse`` — is stored so instead (a tiny weight-shared kernel whose
    codebook outweighs it: :func:`~efficientdl.format.kinds.encode_tensor`), decoding to the
    same values bit for bit.  Every other parameter and buffer is stored dense, a tied
    parameter's further names as ``alias``.

    Args:
        model: the model; parametrized weights are read through their parametrization.
        index_bits: relative-index bits per layer (scalar or mapping by layer/type
            name; default 8 for Conv2d, 5 for Linear, as in the paper).
        coding: ``"huffman"`` (the third stage) or ``"fixed"`` (fixed-width fields).
        arch: architecture reference ``{"name": ..., "kwargs": {...}}``; default
            ``model.edl_arch`` when the model has one.
        meta: free-form JSON-serialisable metadata (accuracy, recipe, ...).
        infer_shared: detect weight-shared values in plain weights.
        shared_layout: for weight-shared tensors, ``"smaller"`` (default: the smaller of
            the two), ``"sparse"`` (relative index + codes) or ``"codes"`` (a code per element).

    Returns:
        ``(file_bytes, layer_records)``.
    """
    if coding not in CODINGS:
        raise ValueError(f"coding must be 'huffman' or 'fixed', got {coding!r}")
    if shared_layout not in ("smaller", "sparse", "codes"):
        raise ValueError(f"shared_layout must be 'smaller', 'sparse' or 'codes', got {shared_layout!r}")
    index_bits = DEFAULT_INDEX_BITS if index_bits is None else index_bits
    w = Writer()
    records, layers = [], []
    handled: set[str] = set()
    for tensor in compressible_tensors(model):
        module, weight = tensor.module, tensor.value
        ib = tensor_setting(index_bits, tensor, "index_bits") or DEFAULT_INDEX_BITS.get(
            layer_type(module), 8 if isinstance(module, nn.modules.conv._ConvNd) else 5)
        if isinstance(ib, bool) or not isinstance(ib, int) or not 1 <= ib <= MAX_INDEX_BITS:
            raise ModelError(f"index bits for '{tensor.key}' must be an integer in 1..{MAX_INDEX_BITS}, got {ib!r}")
        t = _tensor_info(tensor.param_name, weight, index_bits=ib, coding=coding, shared_layout=shared_layout,
                         masked=weight_mask(module, tensor.attr) is not None)
        sw = shared_weight(module, tensor.attr)
        qs = weight_spec(module, tensor.attr)    # a quantizer's output is on its grid by construction
        if qs is not None:
            t.quant = (qs, integer_codes(weight.detach().cpu(), qs).numpy())
        if sw is not None:
            t.codebook = (sw.indices.flatten().numpy(), sw.centroids.detach().numpy(), sw.bits)
        elif qs is None and infer_shared and t.dtype == "float32":
            t.codebook = inferred_codebook(t.array, 8)
        rec, layer = encode_tensor(w, t)
        records.append(rec)
        layers.append(layer)
        handled.add(tensor.param_name)
    tied = tied_parameters(model)
    for name, value in plain_state_dict(model).items():
        if name in tied:   # a tied parameter is stored once; its other names refer to it
            rec, layer = ALIAS.record(_tensor_info(name, value), tied[name])
        elif name not in handled:
            rec, layer = DENSE.encode(w, _tensor_info(name, value))
        else:
            continue
        records.append(rec)
        layers.append(layer)
    header = {"format": "efficientdl", "version": FORMAT_VERSION,
              "arch": arch if arch is not None else getattr(model, "edl_arch", None),
              "meta": meta or {}, "tensors": records}
    inputs = {name: spec.to_json() for name, spec in ((n, input_spec(m)) for n, m in model.named_modules())
              if spec is not None}
    if inputs:                  # activation quantizers: part of what the model computes
        header["input_quantizers"] = inputs
    return header_bytes(header) + bytes(w.blob), layers


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (never half-written).

    The file gets the permissions a plain ``open`` would give (``0o666 & ~umask``, or those
    of the file it replaces); its directory must exist unless it lies in a declared output
    directory (:func:`efficientdl.core.files.atomic_write`).

    Raises:
        FormatError: ``path`` is a directory or cannot be written (one line).
    """
    files.atomic_write(path, data, FormatError)


def save(model: nn.Module, path: str | os.PathLike, **kwargs: Any) -> list[LayerRecord]:
    """Encode ``model`` (see :func:`encode`) and write the file atomically.

    Returns:
        Per-tensor size records.
    """
    data, layers = encode(model, **kwargs)
    atomic_write(path, data)
    return layers


# --------------------------------------------------------------------------- reading
@dataclass
class Container:
    """A parsed, validated compressed file.

    Attributes:
        header: the JSON header.
        tensors: decoded tensors by name (dense, on CPU).
        layers: per-tensor size records.
        size_bytes: size of the whole file.
        codebooks: for shared tensors, ``(indices, codebook)`` as decoded.
        source: where the bytes came from (the path), for messages.

    Its ``repr`` is one short line (the source, the counts), never the data.
    """

    header: dict
    tensors: dict[str, torch.Tensor]
    layers: list[LayerRecord]
    size_bytes: int
    codebooks: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    source: str = "<bytes>"

    def __repr__(self) -> str:
        return f"<Container {self.source!r}: {len(self.tensors)} tensors, {self.size_bytes:,} bytes>"

    __str__ = __repr__


def decode(data: bytes, where: str = "<bytes>") -> Container:
    """Parse and validate the bytes of a compressed file.

    Args:
        data: the whole file.
        where: name used in error messages (the path).

    Returns:
        A :class:`Container` with every tensor decoded.

    Raises:
        FormatError: the bytes are not a valid file of this version (one-line message).
    """
    header, entries = read_records(data, where)
    tensors, layers, codebooks = {}, [], {}
    for rec, decoded in entries:
        if rec["kind"] == ALIAS.name:     # tied parameters: the same tensor under another name
            tensors[rec["name"]] = tensors[rec["of"]]
            layers.append(decoded)
            continue
        tensors[rec["name"]] = torch.from_numpy(decoded.array).to(TORCH_DTYPES[rec["dtype"]])
        layers.append(decoded.layer)
        if decoded.codebook is not None:
            codebooks[rec["name"]] = decoded.codebook
    return Container(header, tensors, layers, len(data), codebooks, where)


def read(path: str | os.PathLike) -> Container:
    """Read and validate a compressed file (see :func:`decode`)."""
    return decode(read_bytes(path), str(path))


def load_into(model: nn.Module, source: str | os.PathLike | Container) -> nn.Module:
    """Copy the weights of a compressed file into ``model`` (dense weights).

    Args:
        model: a model with exactly the file's parameter and buffer names and shapes.
        source: a path or a :class:`Container`.

    Returns:
        ``model`` with its weights replaced.

    Raises:
        ModelError: naming the first tensor whose name or shape does not match.
    """
    c = source if isinstance(source, Container) else read(source)
    target = _plain_targets(model)
    for name, t in c.tensors.items():
        if name not in target:
            raise ModelError(f"file tensor '{name}' has no counterpart in the model")
        if tuple(target[name].shape) != tuple(t.shape):
            raise ModelError(f"shape mismatch for '{name}': file {tuple(t.shape)}, model {tuple(target[name].shape)}")
    missing = [n for n in target if n not in c.tensors]
    if missing:
        raise ModelError(f"model tensor '{missing[0]}' is missing from the file")
    with torch.no_grad():
        for name, t in c.tensors.items():
            target[name].copy_(t.to(target[name].dtype))
    renew_weight_claims(model)          # loading wrote the weights: confirm their quantizers
    return model


def _plain_targets(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state-dict tensors by their plain names; a quantized weight's latent tensor
    under the weight's own name.

    Raises:
        ModelError: the model carries a parametrization other than a weight quantizer
            (a mask or a codebook would change the values loaded).
    """
    target = model.state_dict(keep_vars=True)
    for prefix, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        head = f"{prefix}." if prefix else ""
        for attr in module.parametrizations.keys():
            if not all(isinstance(p, WeightQuantizer) for p in module.parametrizations[attr]):
                raise ModelError("load_into needs a model without parametrizations (a plain, freshly built model)")
            target = {(head + attr if k == f"{head}parametrizations.{attr}.original" else k): v
                      for k, v in target.items()}
    return target


RUNTIMES = ("dense", "compressed")


def load(path: str | os.PathLike | Container, model: Any = None, runtime: str = "dense",
         partitions: int = 0, trust_model_code: bool = False, model_kwargs: dict | None = None,
         prefer: str = "speed", cache: Any = None, precision: str = "fp32") -> nn.Module:
    """Rebuild an ``nn.Module`` from a compressed file.

    Args:
        path: the ``.edlz`` file (or a :class:`Container` already read).
        model: the user's own architecture to load into — a model object, a
            constructor called with no arguments (a class or a function), or a registry
            name or import path ``MODULE:CALLABLE`` built with the recorded arguments
            (updated by ``model_kwargs``) and transforms; by default the architecture
            named in the file is built from the model registry (with its recorded
            transforms: factorised layers, quantizers, folds).
        runtime: ``"dense"`` — plain layers with decoded dense weights; or
            ``"compressed"`` — every weight-shared tensor of two or more dimensions is
            held as a :class:`efficientdl.nn.CompressedWeight` (sparse indices and
            codebook only) that serves ``F.linear``, convolutions, embeddings,
            recurrent and attention layers from compressed form, each product by the
            kernel measured fastest (``model.edl_runtime`` reports it; call
            :func:`efficientdl.nn.settle` with an example input to keep the model never
            slower than dense).
        partitions: for the compressed runtime, kernel row partitions (0 = threads).
        prefer: for the compressed runtime, ``"speed"`` (dense kernels allowed where they
            win, their decoded weights kept) or ``"memory"`` (never keep a decoded weight).
        cache: for the compressed runtime, the per-machine file of measured kernel choices
            (``None``: the default, ``False``: none).
        precision: for the compressed runtime, ``"fp32"`` (exact products) or ``"int8"``
            (linear products may run on int8 activations and weights where faster; the
            error per layer is reported, see :func:`efficientdl.nn.to_runtime`).
        trust_model_code: the file names user code (``{"import": ...}``): import it.
            Without this or ``model``, such a file raises
            :class:`~efficientdl.models.user.ModelCodeNeeded` (loading never imports code
            on its own).
        model_kwargs: keyword arguments over the recorded ones, for a ``model`` given by name.

    Returns:
        The model in eval mode, with decoded weights (equal bit for bit to the
        quantized weights that were saved).
    """
    if runtime not in RUNTIMES:
        raise ModelError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if precision != "fp32" and runtime != "compressed":
        raise ModelError(f"precision={precision!r} needs runtime='compressed' (the dense runtime computes in fp32)")
    c = path if isinstance(path, Container) else read(path)
    where = path.source if isinstance(path, Container) else str(path)
    if model is None or isinstance(model, str):
        from .. import models

        model = models.rebuild(c.header.get("arch"), where, trust_model_code=trust_model_code, model=model,
                               model_kwargs=model_kwargs)
    elif not isinstance(model, nn.Module):
        if not callable(model):
            raise ModelError(f"model must be an nn.Module or a constructor, got {type(model).__name__}")
        built = model()
        if not isinstance(built, nn.Module):
            raise ModelError(f"the model constructor returned {type(built).__name__}, not an nn.Module")
        model = built
    load_into(model, c)
    _attach_input_quantizers(model, c.header.get("input_quantizers"), where)
    if runtime == "compressed":
        from ..nn import to_runtime

        model = to_runtime(model, c.codebooks, partitions, prefer=prefer, cache=cache, precision=precision)
    return model.eval()


def _attach_input_quantizers(model: nn.Module, specs: Any, where: str) -> None:
    """Put the file's activation quantizers on ``model``'s layers (the user's own model too)."""
    if specs is None:
        return
    if not isinstance(specs, dict):
        raise FormatError(f"{where}: malformed input_quantizers")
    modules = dict(model.named_modules())
    for name, d in specs.items():
        if name not in modules:
            raise ModelError(f"{where}: the file quantizes the input of '{name}', which the model does not have")
        try:
            spec = QuantSpec.from_json(d, None, f"input of '{name}'")
        except ValueError as e:
            raise FormatError(f"{where}: {e}") from None
        if spec.axis is not None:
            raise FormatError(f"{where}: the input quantizer of '{name}' must be per tensor")
        attach_input_quantizer(modules[name], spec)
