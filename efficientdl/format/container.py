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
arguments), free-form metadata, and one record per tensor with its name, kind,
shape, dtype, coding parameters and its sections as ``[offset, length, crc32]``
relative to the blob.  The file must end exactly where its last section ends.

Tensor kinds:

* ``dense``: the raw little-endian array.
* ``sparse`` (pruned, fp32 values): relative indices (Deep Compression Figure 2) and
  one float32 value per stored entry (fillers store 0).
* ``shared`` (pruned + weight-shared): relative indices, one ``b``-bit codebook index
  per entry (0 is the zero weight, also used by fillers) and the ``2^b − 1``
  float32 centroids.
* ``codes`` (weight-shared, not much pruned — ternary or binary weights): one ``b``-bit
  codebook index per element (0 = zero) and the centroids; the encoder picks whichever of
  ``shared`` and ``codes`` is smaller.
* ``alias`` (a tied parameter's further names): no data, ``of`` names the stored tensor.
* ``quant`` (linear quantization: dynamic fixed point or affine integers): one ``b``-bit
  code ``q − q_min`` per element and the quantizer in the record (``quant``: scheme,
  bits, range, radix points ``frac_bits`` or per-channel ``scale``/``zero_point``); the
  value is ``(q − z) · s``.

Index and value streams are either Huffman coded (canonical code lengths stored as
a section, then the bitstream) or packed at fixed width.  The encoder always stores
an entry (real or filler) at the last position of a sparse tensor, so the decoder
knows ``numel ≤ entries · 2^index_bits`` before it allocates anything.

Nothing is ever unpickled: loading parses JSON and numeric arrays only.
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from ..compress.coding.huffman import huffman_decode, huffman_encode
from ..compress.coding.sparse_index import relative_index_decode, relative_index_encode
from ..core.parametrize import plain_state_dict
from ..core.state import (QuantSpec, WeightQuantizer, attach_input_quantizer, dequantize, freeze_weight_quantizer,
                          input_spec, integer_codes, shared_weight, weight_mask, weight_spec)
from ..core.tensors import compressible_tensors, layer_type, tensor_setting, tied_parameters
from ..errors import FormatError, ModelError
from ..report.results import LayerRecord

MAGIC = b"EDLZ"
FORMAT_VERSION = 1
PREFIX = struct.Struct("<4sHHII")
MAX_HEADER_BYTES = 64 << 20
MAX_INDEX_BITS = 8
MAX_WEIGHT_BITS = 16
MAX_TOTAL_ELEMENTS = 1 << 31
DEFAULT_INDEX_BITS = {"Conv2d": 8, "Linear": 5}
DTYPES = {
    "float32": (np.float32, torch.float32), "float64": (np.float64, torch.float64),
    "float16": (np.float16, torch.float16), "int64": (np.int64, torch.int64),
    "int32": (np.int32, torch.int32), "int16": (np.int16, torch.int16),
    "int8": (np.int8, torch.int8), "uint8": (np.uint8, torch.uint8), "bool": (np.bool_, torch.bool),
}
TORCH_TO_NAME = {t: name for name, (_, t) in DTYPES.items()}


# --------------------------------------------------------------------------- bit packing
def pack_fixed(values: np.ndarray, bits: int) -> bytes:
    """Pack unsigned integers at a fixed width, MSB first."""
    v = np.asarray(values, dtype=np.uint32)
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint32)
    bitmat = ((v[:, None] >> shifts) & 1).astype(np.uint8)
    return np.packbits(bitmat.ravel()).tobytes()


def unpack_fixed(payload: bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_fixed`; the payload length must match exactly."""
    if len(payload) != (count * bits + 7) // 8:
        raise FormatError(f"fixed-width stream has {len(payload)} bytes, expected {(count * bits + 7) // 8}")
    flat = np.unpackbits(np.frombuffer(payload, np.uint8))[: count * bits].reshape(count, bits)
    weights = (1 << np.arange(bits - 1, -1, -1)).astype(np.int64)
    return flat.astype(np.int64) @ weights if count else np.zeros(0, np.int64)


# --------------------------------------------------------------------------- writing
@dataclass
class _Writer:
    blob: bytearray = field(default_factory=bytearray)

    def add(self, data: bytes) -> list[int]:
        offset = len(self.blob)
        self.blob += data
        return [offset, len(data), zlib.crc32(data)]


def _encode_stream(w: _Writer, symbols: np.ndarray, bits: int, coding: str, sections: dict, key: str) -> float:
    """Store a symbol stream; return the average coded bits per symbol."""
    if coding == "huffman":
        lengths, payload, bit_length = huffman_encode(symbols, 1 << bits)
        used = int(np.flatnonzero(lengths)[-1]) + 1 if np.any(lengths) else 0
        sections[key + "_table"] = w.add(np.asarray(lengths[:used], np.uint8).tobytes())
        sections[key] = w.add(payload)
        return bit_length / max(symbols.size, 1)
    sections[key] = w.add(pack_fixed(symbols, bits))
    return float(bits)


def _sparse_entries(flat_nonzero: np.ndarray, numel: int, index_bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Relative indices of the nonzero positions plus a closing entry at ``numel − 1``.

    Returns ``(deltas, positions, real)`` where ``real`` marks entries that hold a
    stored weight (not a filler).
    """
    positions = flat_nonzero.astype(np.int64)
    closing = positions.size == 0 or positions[-1] != numel - 1
    if closing:
        positions = np.append(positions, numel - 1)
    deltas, is_filler = relative_index_encode(positions, index_bits)
    if closing:
        is_filler = is_filler.copy()
        is_filler[-1] = True
    all_positions = np.cumsum(deltas.astype(np.int64) + 1) - 1
    return deltas, all_positions, ~is_filler


def _tensor_record(name: str, t: torch.Tensor) -> dict[str, Any]:
    if t.dtype not in TORCH_TO_NAME:
        raise ModelError(f"tensor '{name}' has dtype {t.dtype}, which the file cannot store")
    return {"name": name, "shape": list(t.shape), "dtype": TORCH_TO_NAME[t.dtype]}


def _write_dense(w: _Writer, name: str, t: torch.Tensor) -> tuple[dict, LayerRecord]:
    rec = _tensor_record(name, t)
    arr = t.detach().cpu().contiguous().numpy()
    data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
    rec.update(kind="dense", sections={"data": w.add(data)})
    nz = int(np.count_nonzero(arr))
    return rec, LayerRecord(name, t.numel(), nz, "dense", 8.0 * t.element_size(), None, t.numel(), len(data))


def _write_sparse(w: _Writer, name: str, t: torch.Tensor, index_bits: int, coding: str,
                  indices: np.ndarray | None = None, centroids: np.ndarray | None = None,
                  weight_bits: int | None = None) -> tuple[dict, LayerRecord]:
    rec = _tensor_record(name, t)
    flat = t.detach().cpu().flatten().numpy()
    numel = flat.size
    nonzero = np.flatnonzero(indices if indices is not None else flat)
    deltas, positions, real = _sparse_entries(nonzero, numel, index_bits)
    sections: dict[str, list[int]] = {}
    index_avg = _encode_stream(w, deltas, index_bits, coding, sections, "index")
    if indices is None:  # pruned only: fp32 values
        values = np.where(real, flat[positions], 0).astype("<f4")
        sections["values"] = w.add(values.tobytes())
        rec.update(kind="sparse", weight_bits=32)
        value_avg = 32.0
    else:
        symbols = np.where(real, indices[positions], 0).astype(np.int64)
        value_avg = _encode_stream(w, symbols, weight_bits, coding, sections, "values")
        sections["codebook"] = w.add(np.asarray(centroids, "<f4").tobytes())
        rec.update(kind="shared", weight_bits=weight_bits)
    rec.update(index_bits=index_bits, entries=int(deltas.size), coding=coding, sections=sections)
    size = sum(s[1] for s in sections.values())
    layer = LayerRecord(name, numel, int(nonzero.size), rec["kind"], float(rec["weight_bits"]), index_bits,
                        int(deltas.size), size,
                        weight_bits_huffman=value_avg if coding == "huffman" and indices is not None else None,
                        index_bits_huffman=index_avg if coding == "huffman" else None)
    return rec, layer


def _write_codes(w: _Writer, name: str, t: torch.Tensor, coding: str, indices: np.ndarray, centroids: np.ndarray,
                 weight_bits: int) -> tuple[dict, LayerRecord]:
    """A weight-shared tensor as one code per element (0 = zero), no sparse index."""
    rec = _tensor_record(name, t)
    sections: dict[str, list[int]] = {}
    symbols = np.asarray(indices, np.int64).ravel()
    value_avg = _encode_stream(w, symbols, weight_bits, coding, sections, "values")
    sections["codebook"] = w.add(np.asarray(centroids, "<f4").tobytes())
    rec.update(kind="codes", weight_bits=weight_bits, coding=coding, sections=sections)
    size = sum(s[1] for s in sections.values())
    layer = LayerRecord(name, symbols.size, int(np.count_nonzero(symbols)), "codes", float(weight_bits), None,
                        symbols.size, size, weight_bits_huffman=value_avg if coding == "huffman" else None)
    return rec, layer


def _write_quant(w: _Writer, name: str, t: torch.Tensor, coding: str, spec: QuantSpec) -> tuple[dict, LayerRecord]:
    """A linearly quantized tensor: its integer codes (offset by ``q_min``) and its quantizer."""
    rec = _tensor_record(name, t)
    q = integer_codes(t.detach().cpu(), spec)
    symbols = (q.flatten().numpy().astype(np.int64) - spec.qmin)
    sections: dict[str, list[int]] = {}
    value_avg = _encode_stream(w, symbols, spec.bits, coding, sections, "values")
    rec.update(kind="quant", weight_bits=spec.bits, coding=coding, quant=spec.to_json(), sections=sections)
    size = sum(s[1] for s in sections.values())
    layer = LayerRecord(name, symbols.size, int(np.count_nonzero(t.detach().cpu().numpy())), "quant",
                        float(spec.bits), None, symbols.size, size,
                        weight_bits_huffman=value_avg if coding == "huffman" else None)
    return rec, layer


def _write_shared(w: _Writer, name: str, t: torch.Tensor, index_bits: int, coding: str, indices: np.ndarray,
                  centroids: np.ndarray, weight_bits: int, layout: str = "smaller") -> tuple[dict, LayerRecord]:
    """A weight-shared tensor in the sparse (relative index + codes) or the dense-codes layout.

    With ``layout="smaller"`` both are tried and the smaller kept: pruned layers are
    smaller with a sparse index; dense or mildly sparse weight-shared layers (ternary and
    binary weights, say) are smaller as one code per element.
    """
    if layout == "smaller":
        trial = _Writer()
        _, sparse = _write_sparse(trial, name, t, index_bits, coding, indices, centroids, weight_bits)
        _, dense = _write_codes(trial, name, t, coding, indices, centroids, weight_bits)
        layout = "codes" if dense.size_bytes < sparse.size_bytes else "sparse"
    if layout == "codes":
        return _write_codes(w, name, t, coding, indices, centroids, weight_bits)
    return _write_sparse(w, name, t, index_bits, coding, indices, centroids, weight_bits)


def _inferred_codebook(t: torch.Tensor, max_bits: int) -> tuple[np.ndarray, np.ndarray, int] | None:
    """Recover (indices, centroids, bits) from a weight with few distinct nonzero values."""
    flat = t.detach().cpu().flatten().numpy().astype(np.float32)
    values = np.unique(flat[flat != 0])
    if values.size == 0 or values.size > (1 << max_bits) - 1:
        return None
    bits = max(1, math.ceil(math.log2(values.size + 1)))
    idx = np.zeros(flat.size, np.int64)
    nz = flat != 0
    idx[nz] = np.searchsorted(values, flat[nz]) + 1
    centroids = np.concatenate([values, np.full((1 << bits) - 1 - values.size, values[-1], np.float32)])
    return idx, centroids, bits


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

    Each Linear/Conv2d weight is stored as ``shared`` when it carries a weight-sharing
    parametrization (or, with ``infer_shared``, holds at most 255 distinct nonzero
    values, as a weight-shared checkpoint does), as ``sparse`` when it is pruned (a
    mask, or at most half its entries nonzero), else ``dense``.  Every other
    parameter and buffer is stored dense.

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
    if coding not in ("huffman", "fixed"):
        raise ValueError(f"coding must be 'huffman' or 'fixed', got {coding!r}")
    if shared_layout not in ("smaller", "sparse", "codes"):
        raise ValueError(f"shared_layout must be 'smaller', 'sparse' or 'codes', got {shared_layout!r}")
    index_bits = DEFAULT_INDEX_BITS if index_bits is None else index_bits
    w = _Writer()
    records, layers = [], []
    handled: set[str] = set()
    for tensor in compressible_tensors(model):
        module, pname, weight = tensor.module, tensor.param_name, tensor.value
        ib = tensor_setting(index_bits, tensor, "index_bits") or DEFAULT_INDEX_BITS.get(
            layer_type(module), 8 if isinstance(module, nn.modules.conv._ConvNd) else 5)
        if isinstance(ib, bool) or not isinstance(ib, int) or not 1 <= ib <= MAX_INDEX_BITS:
            raise ModelError(f"index bits for '{tensor.key}' must be an integer in 1..{MAX_INDEX_BITS}, got {ib!r}")
        sw = shared_weight(module, tensor.attr)
        qs = weight_spec(module, tensor.attr)    # a quantizer's output is on its grid by construction
        inferred = None if sw is not None or qs is not None or not infer_shared else _inferred_codebook(weight, 8)
        if weight.numel() == 0:
            rec, layer = _write_dense(w, pname, weight)
        elif qs is not None and weight.dtype == torch.float32:
            rec, layer = _write_quant(w, pname, weight, coding, qs)
        elif sw is not None:
            rec, layer = _write_shared(w, pname, weight, ib, coding, sw.indices.flatten().numpy(),
                                       sw.centroids.detach().numpy(), sw.bits, shared_layout)
        elif inferred is not None and weight.dtype == torch.float32:
            idx, cb, bits = inferred
            rec, layer = _write_shared(w, pname, weight, ib, coding, idx, cb, bits, shared_layout)
        elif weight.dtype == torch.float32 and (weight_mask(module, tensor.attr) is not None
                                                or int(torch.count_nonzero(weight)) * 2 <= weight.numel()):
            rec, layer = _write_sparse(w, pname, weight, ib, coding)
        else:
            rec, layer = _write_dense(w, pname, weight)
        records.append(rec)
        layers.append(layer)
        handled.add(pname)
    tied = tied_parameters(model)
    for name, t in plain_state_dict(model).items():
        if name in tied:   # a tied parameter is stored once; its other names refer to it
            records.append({**_tensor_record(name, t), "kind": "alias", "of": tied[name], "sections": {}})
            layers.append(LayerRecord(name, t.numel(), 0, "alias", 0.0, None, 0, 0))
        elif name not in handled:
            rec, layer = _write_dense(w, name, t)
            records.append(rec)
            layers.append(layer)
    header = {"format": "efficientdl", "version": FORMAT_VERSION,
              "arch": arch if arch is not None else getattr(model, "edl_arch", None),
              "meta": meta or {}, "tensors": records}
    inputs = {name: spec.to_json() for name, spec in ((n, input_spec(m)) for n, m in model.named_modules())
              if spec is not None}
    if inputs:                  # activation quantizers: part of what the model computes
        header["input_quantizers"] = inputs
    header_bytes = zlib.compress(json.dumps(header, separators=(",", ":")).encode(), 9)
    prefix = PREFIX.pack(MAGIC, FORMAT_VERSION, 0, len(header_bytes), zlib.crc32(header_bytes))
    return prefix + header_bytes + bytes(w.blob), layers


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (never half-written)."""
    path = Path(path)
    if path.is_dir():
        raise FormatError(f"{path}: is a directory, expected a file path")
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise FormatError(f"{path}: cannot write ({e.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise FormatError(f"{path}: cannot write ({e.strerror or e})") from None
        raise


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
    """

    header: dict
    tensors: dict[str, torch.Tensor]
    layers: list[LayerRecord]
    size_bytes: int
    codebooks: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


def _read_bytes(path: str | os.PathLike) -> bytes:
    p = Path(path)
    if not p.exists():
        raise FormatError(f"{p}: no such file")
    if p.is_dir():
        raise FormatError(f"{p}: is a directory, expected a compressed file")
    if not p.is_file():
        raise FormatError(f"{p}: is not a regular file")
    try:
        return p.read_bytes()
    except OSError as e:
        raise FormatError(f"{p}: cannot read ({e.strerror})") from None


def _parse_header(data: bytes, where: str) -> tuple[dict, memoryview]:
    if len(data) < PREFIX.size or data[:4] != MAGIC:
        raise FormatError(f"{where}: not an efficientdl compressed file (bad magic)")
    _, version, reserved, header_len, header_crc = PREFIX.unpack_from(data)
    if version != FORMAT_VERSION:
        raise FormatError(f"{where}: format version {version} is not supported (this reader knows {FORMAT_VERSION})")
    if reserved != 0:
        raise FormatError(f"{where}: reserved field is {reserved}, expected 0 (corrupted file)")
    end = PREFIX.size + header_len
    if header_len > MAX_HEADER_BYTES or end > len(data):
        raise FormatError(f"{where}: truncated file (header declares {header_len} bytes)")
    raw = data[PREFIX.size:end]
    if zlib.crc32(raw) != header_crc:
        raise FormatError(f"{where}: header checksum mismatch (corrupted file)")
    try:
        d = zlib.decompressobj()
        text = d.decompress(raw, MAX_HEADER_BYTES)
        if d.unconsumed_tail:
            raise FormatError(f"{where}: header too large")
        header = json.loads(text)
    except (zlib.error, ValueError, UnicodeDecodeError):
        raise FormatError(f"{where}: header is not valid (corrupted file)") from None
    if (not isinstance(header, dict) or header.get("format") != "efficientdl"
            or header.get("version") != version or not isinstance(header.get("tensors"), list)):
        raise FormatError(f"{where}: header lacks the efficientdl fields")
    return header, memoryview(data)[end:]


def _int(value: Any, lo: int, hi: int, what: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise FormatError(f"{where}: {what} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def _section(rec: dict, key: str, blob: memoryview, where: str) -> bytes:
    sec = rec.get("sections", {}).get(key) if isinstance(rec.get("sections"), dict) else None
    if not isinstance(sec, list) or len(sec) != 3:
        raise FormatError(f"{where}: tensor '{rec.get('name')}' lacks section '{key}'")
    off = _int(sec[0], 0, len(blob), "section offset", where)
    length = _int(sec[1], 0, len(blob) - off, f"section '{key}' length", where)
    data = bytes(blob[off:off + length])
    if zlib.crc32(data) != sec[2]:
        raise FormatError(f"{where}: checksum mismatch in section '{key}' of '{rec.get('name')}' (corrupted file)")
    return data


def _decode_stream(rec: dict, key: str, bits: int, count: int, blob: memoryview, where: str) -> tuple[np.ndarray, int]:
    payload = _section(rec, key, blob, where)
    if rec["coding"] == "huffman":
        table = np.frombuffer(_section(rec, key + "_table", blob, where), np.uint8)
        if table.size > (1 << bits):
            raise FormatError(f"{where}: Huffman table of '{rec['name']}' is larger than its alphabet")
        try:
            symbols = huffman_decode(table, payload, count)
        except FormatError as e:
            raise FormatError(f"{where}: '{rec['name']}' {key} stream: {e}") from None
        used_bits = int(table[symbols].astype(np.int64).sum()) if symbols.size else 0
        if (used_bits + 7) // 8 != len(payload):       # the stream must hold exactly `count` symbols
            raise FormatError(f"{where}: '{rec['name']}' {key} stream holds {len(payload)} bytes, "
                              f"its {count} symbols need {(used_bits + 7) // 8}")
        return symbols.astype(np.int64), len(payload) + table.size
    try:
        return unpack_fixed(payload, bits, count), len(payload)
    except FormatError as e:
        raise FormatError(f"{where}: '{rec['name']}' {key} stream: {e}") from None


def _codebook(rec: dict, bits: int, symbols: np.ndarray, blob: memoryview, where: str) -> np.ndarray:
    """The codebook section (entry 0, the zero, implied), checked against the symbols that use it."""
    name = rec["name"]
    cb_bytes = _section(rec, "codebook", blob, where)
    if len(cb_bytes) != 4 * ((1 << bits) - 1):
        raise FormatError(f"{where}: tensor '{name}' codebook has {len(cb_bytes)} bytes, expected {4 * ((1 << bits) - 1)}")
    codebook = np.concatenate([[0.0], np.frombuffer(cb_bytes, "<f4")]).astype(np.float32)
    if symbols.size and symbols.max() >= codebook.size:
        raise FormatError(f"{where}: tensor '{name}' uses a codebook index out of range")
    return codebook


def _decode_tensor(rec: dict, blob: memoryview, where: str, budget: list[int]) -> tuple[torch.Tensor, LayerRecord, Any]:
    if not isinstance(rec, dict) or not isinstance(rec.get("name"), str):
        raise FormatError(f"{where}: malformed tensor record")
    name = rec["name"]
    shape = rec.get("shape")
    if not isinstance(shape, list) or len(shape) > 8:
        raise FormatError(f"{where}: tensor '{name}' has no valid shape")
    numel = 1
    for s in shape:
        numel *= _int(s, 0, MAX_TOTAL_ELEMENTS, "dimension", where)
    budget[0] -= numel
    if budget[0] < 0:
        raise FormatError(f"{where}: tensors declare more than {MAX_TOTAL_ELEMENTS} elements")
    if rec.get("dtype") not in DTYPES:
        raise FormatError(f"{where}: tensor '{name}' has unknown dtype {rec.get('dtype')!r}")
    np_dtype, torch_dtype = DTYPES[rec["dtype"]]
    kind = rec.get("kind")
    if kind == "dense":
        data = _section(rec, "data", blob, where)
        itemsize = np.dtype(np_dtype).itemsize
        if len(data) != numel * itemsize:
            raise FormatError(f"{where}: tensor '{name}' has {len(data)} bytes, shape needs {numel * itemsize}")
        arr = np.frombuffer(data, np.dtype(np_dtype).newbyteorder("<")).astype(np_dtype).reshape(shape)
        t = torch.from_numpy(arr.copy())
        nz = int(np.count_nonzero(arr))
        return t, LayerRecord(name, numel, nz, "dense", 8.0 * itemsize, None, numel, len(data)), None
    if kind not in ("sparse", "shared", "codes", "quant") or rec["dtype"] != "float32" \
            or rec.get("coding") not in ("huffman", "fixed"):
        raise FormatError(f"{where}: tensor '{name}' has an unknown kind or coding")
    if kind in ("codes", "quant"):  # one code per element: at least one bit each in the stream
        payload_bytes = rec.get("sections", {}).get("values") if isinstance(rec.get("sections"), dict) else None
        if not isinstance(payload_bytes, list) or len(payload_bytes) != 3 or not isinstance(payload_bytes[1], int) \
                or numel > 8 * payload_bytes[1]:
            raise FormatError(f"{where}: tensor '{name}' declares {numel} codes its stream cannot hold")
    if kind == "quant":
        try:
            spec = QuantSpec.from_json(rec.get("quant"), shape[0] if shape else None, f"tensor '{name}'")
        except ValueError as e:
            raise FormatError(f"{where}: {e}") from None
        if spec.axis is not None and not shape:
            raise FormatError(f"{where}: tensor '{name}' is per-channel but has no channel axis")
        symbols, value_bytes = _decode_stream(rec, "values", spec.bits, numel, blob, where)
        if symbols.size and symbols.max() > spec.qmax - spec.qmin:
            raise FormatError(f"{where}: tensor '{name}' has a code outside its integer range")
        q = torch.from_numpy((symbols + spec.qmin).reshape(shape))
        values = dequantize(q, spec)
        layer = LayerRecord(name, numel, int(torch.count_nonzero(values)), "quant", float(spec.bits), None, numel,
                            value_bytes)
        return values, layer, None
    if kind == "codes":
        wb = _int(rec.get("weight_bits"), 1, MAX_WEIGHT_BITS, "weight_bits", where)
        symbols, value_bytes = _decode_stream(rec, "values", wb, numel, blob, where)
        codebook = _codebook(rec, wb, symbols, blob, where)
        layer = LayerRecord(name, numel, int(np.count_nonzero(symbols)), "codes", float(wb), None, numel,
                            value_bytes + 4 * (codebook.size - 1))
        return (torch.from_numpy(codebook[symbols].astype(np.float32).reshape(shape)), layer,
                (symbols.reshape(shape), codebook))
    ib = _int(rec.get("index_bits"), 1, MAX_INDEX_BITS, "index_bits", where)
    entries = _int(rec.get("entries"), 0, 8 * len(blob), "entries", where)
    if numel > entries << ib or (numel > 0) != (entries > 0):
        raise FormatError(f"{where}: tensor '{name}' declares {numel} elements but only {entries} entries")
    deltas, index_bytes = _decode_stream(rec, "index", ib, entries, blob, where)
    try:
        positions = relative_index_decode(deltas, numel)
    except FormatError as e:
        raise FormatError(f"{where}: '{name}': {e}") from None
    if entries and positions[-1] != numel - 1:
        raise FormatError(f"{where}: tensor '{name}' index stream does not end at its last element")
    flat = np.zeros(numel, np.float32)
    codebook_info = None
    if kind == "sparse":
        data = _section(rec, "values", blob, where)
        if len(data) != 4 * entries:
            raise FormatError(f"{where}: tensor '{name}' values have {len(data)} bytes, expected {4 * entries}")
        flat[positions] = np.frombuffer(data, "<f4")
        value_bytes, wb = len(data), 32
    else:
        wb = _int(rec.get("weight_bits"), 1, MAX_WEIGHT_BITS, "weight_bits", where)
        symbols, value_bytes = _decode_stream(rec, "values", wb, entries, blob, where)
        codebook = _codebook(rec, wb, symbols, blob, where)
        flat[positions] = codebook[symbols]
        value_bytes += 4 * (codebook.size - 1)
        indices = np.zeros(numel, np.int64)
        indices[positions] = symbols
        codebook_info = (indices.reshape(shape), codebook)
    nz = int(np.count_nonzero(flat))
    layer = LayerRecord(name, numel, nz, kind, float(wb), ib, entries, index_bytes + value_bytes)
    return torch.from_numpy(flat.reshape(shape)), layer, codebook_info


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
    header, blob = _parse_header(data, where)
    spans = []
    for rec in header["tensors"]:
        secs = rec.get("sections") if isinstance(rec, dict) else None
        for sec in secs.values() if isinstance(secs, dict) else ():
            if isinstance(sec, list) and len(sec) == 3 and all(isinstance(x, int) and not isinstance(x, bool)
                                                               for x in sec[:2]):
                spans.append((sec[0], sec[1]))
    blob_end = max((off + length for off, length in spans), default=0)
    if blob_end > len(blob):
        raise FormatError(f"{where}: truncated file ({len(blob)} data bytes, sections need {blob_end})")
    # the writer lays sections back to back: they must tile the data exactly (no gap, no overlap),
    # so a section moved or resized — even with its checksum recomputed — is refused
    position = 0
    for off, length in sorted(spans):
        if off != position:
            raise FormatError(f"{where}: sections {'overlap' if off < position else 'leave a gap'} at byte {off} "
                              "(corrupted file)")
        position += length
    if position < len(blob):
        raise FormatError(f"{where}: {len(blob) - position} unexpected bytes after the last section")
    tensors, layers, codebooks, aliases = {}, [], {}, []
    budget = [MAX_TOTAL_ELEMENTS]
    for rec in header["tensors"]:
        if isinstance(rec, dict) and rec.get("kind") == "alias":
            if not isinstance(rec.get("name"), str) or not isinstance(rec.get("of"), str) or rec.get("sections") != {}:
                raise FormatError(f"{where}: malformed alias record")
            aliases.append(rec)
            continue
        t, layer, cb = _decode_tensor(rec, blob, where, budget)
        if layer.name in tensors:
            raise FormatError(f"{where}: tensor '{layer.name}' appears twice")
        tensors[layer.name] = t.to(DTYPES[rec["dtype"]][1])
        layers.append(layer)
        if cb is not None:
            codebooks[layer.name] = cb
    for rec in aliases:  # tied parameters: the same tensor under another name
        name, target = rec["name"], tensors.get(rec["of"])
        if name in tensors:
            raise FormatError(f"{where}: tensor '{name}' appears twice")
        if target is None or rec.get("shape") != list(target.shape) or rec.get("dtype") != TORCH_TO_NAME.get(target.dtype):
            raise FormatError(f"{where}: '{name}' is tied to '{rec['of']}', which the file does not hold "
                              "with that shape and type")
        tensors[name] = target
        layers.append(LayerRecord(name, target.numel(), 0, "alias", 0.0, None, 0, 0))
    return Container(header, tensors, layers, len(data), codebooks)


def read(path: str | os.PathLike) -> Container:
    """Read and validate a compressed file (see :func:`decode`)."""
    return decode(_read_bytes(path), str(path))


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
    for module in model.modules():      # the decoded values are on their quantizers' grids
        if parametrize.is_parametrized(module):
            for attr in module.parametrizations.keys():
                freeze_weight_quantizer(module, attr)
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
         partitions: int = 0) -> nn.Module:
    """Rebuild an ``nn.Module`` from a compressed file.

    Args:
        path: the ``.edlz`` file (or a :class:`Container` already read).
        model: the user's own architecture to load into — a model object, or a
            constructor called with no arguments (a class or a function); by default
            the architecture named in the file is built from the model registry
            (with its recorded transforms: factorised layers, quantizers, folds).
        runtime: ``"dense"`` — plain layers with decoded dense weights; or
            ``"compressed"`` — weight-shared ``Linear``/``Conv2d`` layers become
            :class:`efficientdl.nn.CompressedLinear` / ``CompressedConv2d`` that keep
            only the sparse indices and codebook in memory and compute from them
            (the converted and the kept layers are listed in ``model.edl_runtime``).
        partitions: for the compressed runtime, kernel row partitions (0 = threads).

    Returns:
        The model in eval mode, with decoded weights (equal bit for bit to the
        quantized weights that were saved).
    """
    if runtime not in RUNTIMES:
        raise ModelError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    c = path if isinstance(path, Container) else read(path)
    if model is None:
        from .. import models

        model = models.rebuild(c.header.get("arch"), str(path))
    elif not isinstance(model, nn.Module):
        if not callable(model):
            raise ModelError(f"model must be an nn.Module or a constructor, got {type(model).__name__}")
        built = model()
        if not isinstance(built, nn.Module):
            raise ModelError(f"the model constructor returned {type(built).__name__}, not an nn.Module")
        model = built
    load_into(model, c)
    _attach_input_quantizers(model, c.header.get("input_quantizers"), str(path))
    if runtime == "compressed":
        from ..nn import to_runtime

        model, converted, kept = to_runtime(model, c.codebooks, partitions)
        model.edl_runtime = {"compressed": converted, "dense": kept}
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


def info(path: str | os.PathLike) -> dict[str, Any]:
    """Describe a compressed file: architecture, metadata, per-tensor sizes and ratio.

    Returns:
        A JSON-serialisable dict with ``size_bytes``, ``original_bytes`` (fp32 bytes
        of all floating tensors), ``ratio``, ``arch``, ``meta`` and ``tensors``.
    """
    c = read(path)
    dtypes = {rec["name"]: rec["dtype"] for rec in c.header["tensors"]}
    original = sum(4 * layer.weights for layer in c.layers             # a tied tensor counts once
                   if layer.kind != "alias" and dtypes[layer.name].startswith("float"))
    return {
        "path": str(path),
        "format_version": c.header["version"],
        "size_bytes": c.size_bytes,
        "original_bytes": original,
        "ratio": original / c.size_bytes,
        "arch": c.header.get("arch"),
        "meta": c.header.get("meta"),
        "tensors": [layer.to_dict() for layer in c.layers],
    }
