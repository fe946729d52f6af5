"""File tensor kinds: how one tensor is laid out in the compressed file, one class each.

Every kind has a ``name`` (the ``kind`` of its records in the header) and

* ``accepts(t)``: whether the encoder may store the tensor ``t`` (a :class:`TensorInfo`)
  as this kind; :func:`choose_kind` asks the kinds of :data:`ENCODE_ORDER` in turn, and
  :func:`encode_tensor` stores the one it finds unless the same values are smaller
  stored plain (``dense`` or ``sparse``): no tensor is stored larger than those;
* ``encode(w, t)``: append its sections to the blob, return ``(record, LayerRecord)``;
* ``validate(rec, blob, where)``: every header check of the kind (one-line
  :class:`~efficientdl.errors.FormatError`), before any of its bytes are read;
* ``decode(rec, blob, where)``: the tensor as a numpy array, its size record and, for
  weight-shared kinds, ``(indices, codebook)``;
* ``size(rec, blob, where)``: the size record alone, computed with numpy only (no
  torch, no numba), for :func:`efficientdl.format.info`.

The record fields common to every kind (``name``, ``shape``, ``dtype``) are checked by
:func:`check_record` first.  Kinds work on numpy arrays; :mod:`.container` converts
to and from torch.  This module imports neither torch nor numba at module level: the
Huffman coder and the relative index of :mod:`efficientdl.compress.coding`, and the
quantizer spec of :mod:`efficientdl.core.quantspec`, are imported where they are used.

A new kind is one class here, added to :data:`KINDS` (and, if the encoder should
pick it, to :data:`ENCODE_ORDER`); a reader keeps every kind an older version wrote.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..core.registry import Registry
from ..errors import FormatError
from ..report.results import LayerRecord
from .streams import (CODINGS, Writer, check_int, decode_stream, encode_stream, read_codebook, read_section,
                      section_span)

MAX_INDEX_BITS = 8
MAX_WEIGHT_BITS = 16
MAX_TOTAL_ELEMENTS = 1 << 31
#: Element types a record may name, with their numpy types (stored little-endian).
NUMPY_DTYPES = {
    "float32": np.float32, "float64": np.float64, "float16": np.float16, "int64": np.int64,
    "int32": np.int32, "int16": np.int16, "int8": np.int8, "uint8": np.uint8, "bool": np.bool_,
}

Codebook = tuple[np.ndarray, np.ndarray]


@dataclass
class TensorInfo:
    """What the encoder knows about one tensor (numpy only).

    Attributes:
        name: the tensor's name in the file (``fc1.weight``).
        array: its values, on the CPU, C-contiguous.
        dtype: its element type, a key of :data:`NUMPY_DTYPES`.
        index_bits: relative-index bits for a sparse layout.
        coding: ``"huffman"`` or ``"fixed"``.
        masked: the tensor carries a pruning mask.
        codebook: weight sharing, ``(indices, centroids, bits)``: one index per element
            (0 = zero), the ``2^bits − 1`` centroids of indices ``1..``.
        quant: linear quantization, ``(spec, codes)``: the
            :class:`~efficientdl.core.state.QuantSpec` and the integer codes ``q``.
        shared_layout: for a weight-shared tensor, ``"smaller"``, ``"sparse"`` or ``"codes"``.
    """

    name: str
    array: np.ndarray
    dtype: str
    index_bits: int = 5
    coding: str = "fixed"
    masked: bool = False
    codebook: tuple[np.ndarray, np.ndarray, int] | None = None
    quant: tuple[Any, np.ndarray] | None = None
    shared_layout: str = "smaller"

    @property
    def numel(self) -> int:
        return int(self.array.size)

    def record(self) -> dict[str, Any]:
        """The record fields every kind starts with."""
        return {"name": self.name, "shape": list(self.array.shape), "dtype": self.dtype}


@dataclass
class Decoded:
    """A decoded tensor: ``array`` (numpy), its size record and, if weight-shared, ``(indices, codebook)``."""

    array: np.ndarray
    layer: LayerRecord
    codebook: Codebook | None = None


# --------------------------------------------------------------------------- common record checks
def check_record(rec: Any, where: str, budget: list[int]) -> int:
    """Check the fields every stored tensor's record has; return its element count.

    ``budget[0]`` (elements the file may still declare) is charged with the count.
    """
    if not isinstance(rec, dict) or not isinstance(rec.get("name"), str):
        raise FormatError(f"{where}: malformed tensor record")
    name = rec["name"]
    shape = rec.get("shape")
    if not isinstance(shape, list) or len(shape) > 8:
        raise FormatError(f"{where}: tensor '{name}' has no valid shape")
    numel = 1
    for s in shape:
        numel *= check_int(s, 0, MAX_TOTAL_ELEMENTS, "dimension", where)
    budget[0] -= numel
    if budget[0] < 0:
        raise FormatError(f"{where}: tensors declare more than {MAX_TOTAL_ELEMENTS} elements")
    if rec.get("dtype") not in NUMPY_DTYPES:
        raise FormatError(f"{where}: tensor '{name}' has unknown dtype {rec.get('dtype')!r}")
    return numel


def _numel(rec: dict) -> int:
    return math.prod(rec["shape"])


def _check_coded(rec: dict, where: str) -> None:
    """A coded kind stores float32 values with a known coding."""
    if rec["dtype"] != "float32" or rec.get("coding") not in CODINGS:
        raise FormatError(f"{where}: tensor '{rec['name']}' has an unknown kind or coding")


def _check_code_per_element(rec: dict, where: str) -> None:
    """One code per element: at least one bit each in the ``values`` stream."""
    numel = _numel(rec)
    payload = rec.get("sections", {}).get("values") if isinstance(rec.get("sections"), dict) else None
    if not isinstance(payload, list) or len(payload) != 3 or not isinstance(payload[1], int) \
            or numel > 8 * payload[1]:
        raise FormatError(f"{where}: tensor '{rec['name']}' declares {numel} codes its stream cannot hold")


def _huffman_bits(rec: dict, coded_bits: int, count: int) -> float | None:
    """Average coded bits per symbol of a Huffman stream (as the encoder reports), else None."""
    return coded_bits / max(count, 1) if rec["coding"] == "huffman" else None


# --------------------------------------------------------------------------- the kinds
class FileTensorKind:
    """Base of the file tensor kinds (see the module docstring for the protocol)."""

    name: ClassVar[str]
    help: ClassVar[str] = ""

    def accepts(self, t: TensorInfo) -> bool:
        return False

    def encode(self, w: Writer, t: TensorInfo) -> tuple[dict, LayerRecord]:
        raise TypeError(f"the {self.name} kind stores no data of its own: it has no encode")

    def validate(self, rec: dict, blob: memoryview, where: str) -> None:
        raise TypeError(f"the {self.name} kind defines no validate")

    def decode(self, rec: dict, blob: memoryview, where: str) -> Decoded:
        raise TypeError(f"the {self.name} kind stores no data of its own: it has no decode")

    def size(self, rec: dict, blob: memoryview, where: str) -> LayerRecord:
        raise TypeError(f"the {self.name} kind stores no data of its own: it has no size")

    def __repr__(self) -> str:
        return f"<file tensor kind {self.name!r}>"


class Dense(FileTensorKind):
    """``dense``: the raw array.

    Sections: ``data``, the elements in C order, little-endian, of the record's
    ``dtype`` (``numel · itemsize`` bytes).  Every tensor no other kind accepts is
    stored so: empty tensors, buffers, biases, non-float tensors, unpruned weights.
    """

    name = "dense"
    help = "the raw little-endian array"

    def accepts(self, t: TensorInfo) -> bool:
        return True

    def encode(self, w: Writer, t: TensorInfo) -> tuple[dict, LayerRecord]:
        arr = t.array
        data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        rec = t.record()
        rec.update(kind="dense", sections={"data": w.add(data)})
        return rec, LayerRecord(t.name, t.numel, int(np.count_nonzero(arr)), "dense", 8.0 * arr.itemsize, None,
                                t.numel, len(data))

    def validate(self, rec: dict, blob: memoryview, where: str) -> None:
        _, length = section_span(rec, "data", blob, where)
        expected = _numel(rec) * np.dtype(NUMPY_DTYPES[rec["dtype"]]).itemsize
        if length != expected:
            raise FormatError(f"{where}: tensor '{rec['name']}' has {length} bytes, shape needs {expected}")

    def decode(self, rec: dict, blob: memoryview, where: str) -> Decoded:
        np_dtype = np.dtype(NUMPY_DTYPES[rec["dtype"]])
        data = read_section(rec, "data", blob, where)
        arr = np.frombuffer(data, np_dtype.newbyteorder("<")).astype(np_dtype).reshape(rec["shape"])
        return Decoded(arr, self._layer(rec, arr, len(data)))

    def size(self, rec: dict, blob: memoryview, where: str) -> LayerRecord:
        data = read_section(rec, "data", blob, where)
        return self._layer(rec, np.frombuffer(data, np.dtype(NUMPY_DTYPES[rec["dtype"]]).newbyteorder("<")),
                           len(data))

    @staticmethod
    def _layer(rec: dict, arr: np.ndarray, nbytes: int) -> LayerRecord:
        numel = _numel(rec)
        return LayerRecord(rec["name"], numel, int(np.count_nonzero(arr)), "dense", 8.0 * arr.itemsize, None, numel,
                           nbytes)


class Sparse(FileTensorKind):
    """``sparse`` (pruned, fp32 values): relative indices and one float32 per entry.

    Record fields: ``index_bits`` (1..8), ``entries`` (stored entries, fillers
    included), ``coding``, ``weight_bits`` (32).  Sections: the ``index`` stream of
    ``entries`` relative indices (Deep Compression Figure 2: zeros skipped since the
    previous entry; a longer run of zeros is bridged by filler entries), then
    ``values``, ``entries`` float32 little-endian (fillers store 0).  The encoder
    always stores an entry (real or filler) at the last position, so a reader knows
    ``numel ≤ entries · 2^index_bits`` before it allocates anything.

    The encoder picks it for a float32 tensor that carries a mask or has at most half
    its entries nonzero.
    """

    name = "sparse"
    help = "pruned: relative indices and float32 values"

    def accepts(self, t: TensorInfo) -> bool:
        return t.numel > 0 and t.dtype == "float32" and (t.masked or int(np.count_nonzero(t.array)) * 2 <= t.numel)

    def encode(self, w: Writer, t: TensorInfo) -> tuple[dict, LayerRecord]:
        return _encode_entries(w, t, None)

    def validate(self, rec: dict, blob: memoryview, where: str) -> None:
        _check_coded(rec, where)
        self._check_entries(rec, blob, where)

    @staticmethod
    def _check_entries(rec: dict, blob: memoryview, where: str) -> tuple[int, int]:
        numel = _numel(rec)
        ib = check_int(rec.get("index_bits"), 1, MAX_INDEX_BITS, "index_bits", where)
        entries = check_int(rec.get("entries"), 0, 8 * len(blob), "entries", where)
        if numel > entries << ib or (numel > 0) != (entries > 0):
            raise FormatError(f"{where}: tensor '{rec['name']}' declares {numel} elements but only {entries} entries")
        return ib, entries

    @staticmethod
    def _index(rec: dict, blob: memoryview, where: str, light: bool) -> tuple[np.ndarray | None, int, int]:
        """The entries' positions (None when ``light``), the index stream's bytes and coded bits."""
        numel, ib, entries = _numel(rec), rec["index_bits"], rec["entries"]
        deltas, index_bytes, index_bits = decode_stream(rec, "index", ib, entries, blob, where, light)
        if light:       # only where the index stream ends: the last position
            positions, last = None, int(deltas.sum()) + entries - 1
            if entries and last >= numel:
                raise FormatError(f"{where}: '{rec['name']}': relative sparse index reaches position {last} "
                                  f"beyond length {numel}")
        else:
            from ..compress.coding.sparse_index import relative_index_decode

            try:
                positions = relative_index_decode(deltas, numel)
            except FormatError as e:
                raise FormatError(f"{where}: '{rec['name']}': {e}") from None
            last = int(positions[-1]) if entries else -1
        if entries and last != numel - 1:
            raise FormatError(f"{where}: tensor '{rec['name']}' index stream does not end at its last element")
        return positions, index_bytes, index_bits

    def _values(self, rec: dict, blob: memoryview, where: str) -> np.ndarray:
        data = read_section(rec, "values", blob, where)
        if len(data) != 4 * rec["entries"]:
            raise FormatError(f"{where}: tensor '{rec['name']}' values have {len(data)} bytes, "
                              f"expected {4 * rec['entries']}")
        return np.frombuffer(data, "<f4")

    def _layer(self, rec: dict, nonzero: int, nbytes: int, index_bits: int) -> LayerRecord:
        return LayerRecord(rec["name"], _numel(rec), nonzero, "sparse", 32.0, rec["index_bits"], rec["entries"],
                           nbytes, index_bits_huffman=_huffman_bits(rec, index_bits, rec["entries"]))

    def decode(self, rec: dict, blob: memoryview, where: str) -> Decoded:
        positions, index_bytes, index_bits = self._index(rec, blob, where, light=False)
        values = self._values(rec, blob, where)
        flat = np.zeros(_numel(rec), np.float32)
        flat[positions] = values
        layer = self._layer(rec, int(np.count_nonzero(flat)), index_bytes + values.nbytes, index_bits)
        return Decoded(flat.reshape(rec["shape"]), layer)

    def size(self, rec: dict, blob: memoryview, where: str) -> LayerRecord:
        _, index_bytes, index_bits = self._index(rec, blob, where, light=True)
        values = self._values(rec, blob, where)       # positions are distinct: the nonzero values are the count
        return self._layer(rec, int(np.count_nonzero(values)), index_bytes + values.nbytes, index_bits)


class Shared(Sparse):
    """``shared`` (pruned + weight-shared): relative indices and one codebook index per entry.

    Record fields: those of ``sparse`` with ``weight_bits`` ``b`` (1..16).  Sections:
    the ``index`` stream (as ``sparse``), the ``values`` stream of ``entries``
    ``b``-bit codebook indices (0 is the zero weight, also used by fillers) and
    ``codebook``, the ``2^b − 1`` float32 centroids of indices ``1..2^b − 1``.

    The encoder picks it for a weight-shared tensor (a sharing parametrization, or a
    plain float32 weight with at most 255 distinct nonzero values) with
    ``shared_layout="sparse"``, or with ``"smaller"`` when it is not larger than
    ``codes`` (and, with ``"smaller"``, not larger than its values stored plain:
    :func:`encode_tensor`).
    """

    name = "shared"
    help = "pruned + weight-shared: relative indices, codebook indices and centroids"

    def accepts(self, t: TensorInfo) -> bool:
        if t.numel == 0 or t.codebook is None or t.shared_layout == "codes":
            return False
        if t.shared_layout == "sparse":
            return True
        trial = Writer()        # "smaller": pruned layers are smaller with a sparse index, dense ones as codes
        return _encode_entries(trial, t, t.codebook)[1].size_bytes <= CODES.encode(trial, t)[1].size_bytes

    def encode(self, w: Writer, t: TensorInfo) -> tuple[dict, LayerRecord]:
        return _encode_entries(w, t, t.codebook)

    def validate(self, rec: dict, blob: memoryview, where: str) -> None:
        _check_coded(rec, where)
        self._check_entries(rec, blob, where)
        check_int(rec.get("weight_bits"), 1, MAX_WEIGHT_BITS, "weight_bits", where)

    def _codes(self, rec: dict, blob: memoryview, where: str, light: bool) -> tuple[np.ndarray, np.ndarray, int, int]:
        wb = rec["weight_bits"]
        symbols, value_bytes, value_bits = decode_stream(rec, "values", wb, rec["entries"], blob, where, light)
        codebook = read_codebook(rec, wb, symbols, blob, where)
        return symbols, codebook, value_bytes + 4 * (codebook.size - 1), value_bits

    def _shared_layer(self, rec: dict, nonzero: int, nbytes: int, index_bits: int, value_bits: int) -> LayerRecord:
        return LayerRecord(rec["name"], _numel(rec), nonzero, "shared", float(rec["weight_bits"]), rec["index_bits"],
                           rec["entries"], nbytes, weight_bits_huffman=_huffman_bits(rec, value_bits, rec["entries"]),
                           index_bits_huffman=_huffman_bits(rec, index_bits, rec["entries"]))

    def decode(self, rec: dict, blob: memoryview, where: str) -> Decoded:
        positions, index_bytes, index_bits = self._index(rec, blob, where, light=False)
        symbols, codebook, value_bytes, value_bits = self._codes(rec, blob, where, light=False)
        numel = _numel(rec)
        flat = np.zeros(numel, np.float32)
        flat[positions] = codebook[symbols]
        indices = np.zeros(numel, np.int64)
        indices[positions] = symbols
        layer = self._shared_layer(rec, int(np.count_nonzero(flat)), index_bytes + value_bytes, index_bits,
                                   value_bits)
        return Decoded(flat.reshape(rec["shape"]), layer, (indices.reshape(rec["shape"]), codebook))

    def size(self, rec: dict, blob: memoryview, where: str) -> LayerRecord:
        _, index_bytes, index_bits = self._index(rec, blob, where, light=True)
        symbols, codebook, value_bytes, value_bits = self._codes(rec, blob, where, light=True)
        return self._shared_layer(rec, int(np.count_nonzero(codebook[symbols])), index_bytes + value_bytes,
                                  index_bits, value_bits)


def _encode_entries(w: Writer, t: TensorInfo, codebook: tuple[np.ndarray, np.ndarray, int] | None
                    ) -> tuple[dict, LayerRecord]:
    """A ``sparse`` (``codebook`` None: fp32 values) or ``shared`` record of ``t``."""
    from ..compress.coding.sparse_index import relative_index_encode

    flat = t.array.reshape(-1)
    numel, ib = flat.size, t.index_bits
    indices = None if codebook is None else codebook[0]
    nonzero = np.flatnonzero(indices if indices is not None else flat)
    # relative indices of the nonzero positions plus a closing entry at numel − 1
    positions = nonzero.astype(np.int64)
    closing = positions.size == 0 or positions[-1] != numel - 1
    if closing:
        positions = np.append(positions, numel - 1)
    deltas, is_filler = relative_index_encode(positions, ib)
    if closing:
        is_filler = is_filler.copy()
        is_filler[-1] = True
    positions, real = np.cumsum(deltas.astype(np.int64) + 1) - 1, ~is_filler
    rec = t.record()
    sections: dict[str, list[int]] = {}
    index_avg = encode_stream(w, deltas, ib, t.coding, sections, "index")
    if codebook is None:  # pruned only: fp32 values
        values = np.where(real, flat[positions], 0).astype("<f4")
        sections["values"] = w.add(values.tobytes())
        rec.update(kind="sparse", weight_bits=32)
    else:
        _, centroids, bits = codebook
        symbols = np.where(real, indices[positions], 0).astype(np.int64)
        value_avg = encode_stream(w, symbols, bits, t.coding, sections, "values")
        sections["codebook"] = w.add(np.asarray(centroids, "<f4").tobytes())
        rec.update(kind="shared", weight_bits=bits)
    rec.update(index_bits=ib, entries=int(deltas.size), coding=t.coding, sections=sections)
    size = sum(s[1] for s in sections.values())
    huffman = t.coding == "huffman"
    layer = LayerRecord(t.name, numel, int(nonzero.size), rec["kind"], float(rec["weight_bits"]), ib,
                        int(deltas.size), size,
                        weight_bits_huffman=value_avg if huffman and codebook is not None else None,
                        index_bits_huffman=index_avg if huffman else None)
    return rec, layer


class Codes(FileTensorKind):
    """``codes`` (weight-shared, not much pruned — ternary or binary weights): a code per element.

    Record fields: ``weight_bits`` ``b`` (1..16), ``coding``.  Sections: the ``values``
    stream of ``numel`` ``b``-bit codebook indices in C order (0 = zero) and
    ``codebook``, the ``2^b − 1`` float32 centroids.  No sparse index.

    The encoder picks it for a weight-shared tensor that ``shared`` declined
    (``shared_layout="codes"``, or ``"smaller"`` when it is smaller).
    """

    name = "codes"
    help = "weight-shared: one codebook index per element and the centroids"

    def accepts(self, t: TensorInfo) -> bool:
        return t.numel > 0 and t.codebook is not None

    def encode(self, w: Writer, t: TensorInfo) -> tuple[dict, LayerRecord]:
        indices, centroids, bits = t.codebook
        rec = t.record()
        sections: dict[str, list[int]] = {}
        symbols = np.asarray(indices, np.int64).ravel()
        value_avg = encode_stream(w, symbols, bits, t.coding, sections, "values")
        sections["codebook"] = w.add(np.asarray(centroids, "<f4").tobytes())
        rec.update(kind="codes", weight_bits=bits, coding=t.coding, sections=sections)
        size = sum(s[1] for s in sections.values())
        return rec, LayerRecord(t.name, symbols.size, int(np.count_nonzero(symbols)), "codes", float(bits), None,
                                symbols.size, size, weight_bits_huffman=value_avg if t.coding == "huffman" else None)

    def validate(self, rec: dict, blob: memoryview, where: str) -> None:
        _check_coded(rec, where)
        _check_code_per_element(rec, where)
        check_int(rec.get("weight_bits"), 1, MAX_WEIGHT_BITS, "weight_bits", where)

    def _read(self, rec: dict, blob: memoryview, where: str, light: bool) -> tuple[np.ndarray, np.ndarray, LayerRecord]:
        numel, wb = _numel(rec), rec["weight_bits"]
        symbols, value_bytes, value_bits = decode_stream(rec, "values", wb, numel, blob, where, light)
        codebook = read_codebook(rec, wb, symbols, blob, where)
        layer = LayerRecord(rec["name"], numel, int(np.count_nonzero(symbols)), "codes", float(wb), None, numel,
                            value_bytes + 4 * (codebook.size - 1),
                            weight_bits_huffman=_huffman_bits(rec, value_bits, numel))
        return symbols, codebook, layer

    def decode(self, rec: dict, blob: memoryview, where: str) -> Decoded:
        symbols, codebook, layer = self._read(rec, blob, where, light=False)
        shape = rec["shape"]
        return Decoded(codebook[symbols].astype(np.float32).reshape(shape), layer, (symbols.reshape(shape), codebook))

    def size(self, rec: dict, blob: memoryview, where: str) -> LayerRecord:
        return self._read(rec, blob, where, light=True)[2]


class Quant(FileTensorKind):
    """``quant`` (linear quantization: dynamic fixed point or affine integers): a code per element.

    Record fields: ``weight_bits`` ``b``, ``coding`` and ``quant``, the quantizer
    (:meth:`efficientdl.core.state.QuantSpec.to_json`: scheme, bits, range
    ``[q_min, q_max]``, radix points ``frac_bits`` or per-channel ``scale`` /
    ``zero_point`` along ``axis`` 0).  Sections: the ``values`` stream of ``numel``
    ``b``-bit codes ``q − q_min`` in C order.  The value is ``(q − z) · s`` in float32.

    The encoder picks it for a float32 tensor that carries a weight quantizer.
    """

    name = "quant"
    help = "linearly quantized: one integer code per element and the quantizer"

    def accepts(self, t: TensorInfo) -> bool:
        return t.numel > 0 and t.quant is not None and t.dtype == "float32"

    def encode(self, w: Writer, t: TensorInfo) -> tuple[dict, LayerRecord]:
        spec, codes = t.quant
        symbols = np.asarray(codes).reshape(-1).astype(np.int64) - spec.qmin
        rec = t.record()
        sections: dict[str, list[int]] = {}
        value_avg = encode_stream(w, symbols, spec.bits, t.coding, sections, "values")
        rec.update(kind="quant", weight_bits=spec.bits, coding=t.coding, quant=spec.to_json(), sections=sections)
        size = sum(s[1] for s in sections.values())
        return rec, LayerRecord(t.name, symbols.size, int(np.count_nonzero(t.array)), "quant", float(spec.bits), None,
                                symbols.size, size, weight_bits_huffman=value_avg if t.coding == "huffman" else None)

    @staticmethod
    def _spec(rec: dict, where: str) -> Any:
        from ..core.quantspec import QuantSpec

        shape = rec["shape"]
        try:
            spec = QuantSpec.from_json(rec.get("quant"), shape[0] if shape else None, f"tensor '{rec['name']}'")
        except ValueError as e:
            raise FormatError(f"{where}: {e}") from None
        if spec.axis is not None and not shape:
            raise FormatError(f"{where}: tensor '{rec['name']}' is per-channel but has no channel axis")
        return spec

    def validate(self, rec: dict, blob: memoryview, where: str) -> None:
        _check_coded(rec, where)
        _check_code_per_element(rec, where)
        self._spec(rec, where)

    def _read(self, rec: dict, blob: memoryview, where: str, light: bool) -> tuple[np.ndarray, Any, int, int]:
        """The integer codes ``q`` (in the record's shape), the spec, the stream's bytes and coded bits."""
        spec = self._spec(rec, where)
        symbols, value_bytes, value_bits = decode_stream(rec, "values", spec.bits, _numel(rec), blob, where, light)
        if symbols.size and symbols.max() > spec.qmax - spec.qmin:
            raise FormatError(f"{where}: tensor '{rec['name']}' has a code outside its integer range")
        return (symbols + spec.qmin).reshape(rec["shape"]), spec, value_bytes, value_bits

    def _layer(self, rec: dict, spec: Any, nonzero: int, nbytes: int, value_bits: int) -> LayerRecord:
        numel = _numel(rec)
        return LayerRecord(rec["name"], numel, nonzero, "quant", float(spec.bits), None, numel, nbytes,
                           weight_bits_huffman=_huffman_bits(rec, value_bits, numel))

    def decode(self, rec: dict, blob: memoryview, where: str) -> Decoded:
        import torch

        from ..core.state import dequantize

        q, spec, value_bytes, value_bits = self._read(rec, blob, where, light=False)
        values = dequantize(torch.from_numpy(q), spec).numpy()
        return Decoded(values, self._layer(rec, spec, int(np.count_nonzero(values)), value_bytes, value_bits))

    def size(self, rec: dict, blob: memoryview, where: str) -> LayerRecord:
        q, spec, value_bytes, value_bits = self._read(rec, blob, where, light=True)
        # (q − z) · s is zero exactly where q = z: s is a finite positive float32 and |q − z| ≥ 1 elsewhere
        z = np.asarray(spec.zero_point, np.int64)
        nonzero = int(np.count_nonzero(q != (z.reshape((-1,) + (1,) * (q.ndim - 1)) if spec.axis is not None else z)))
        return self._layer(rec, spec, nonzero, value_bytes, value_bits)


class Alias(FileTensorKind):
    """``alias`` (a tied parameter's further names): a record without data.

    Record fields: ``name``, ``shape``, ``dtype``, ``of`` (the name of the stored
    tensor it is tied to, which must have that shape and dtype) and empty ``sections``.
    The encoder writes one for every name of a tied parameter after the first.
    """

    name = "alias"
    help = "a tied parameter's further name: no data"

    def record(self, t: TensorInfo, of: str) -> tuple[dict, LayerRecord]:
        """The alias record of ``t``, tied to the stored tensor ``of``."""
        return ({**t.record(), "kind": "alias", "of": of, "sections": {}},
                LayerRecord(t.name, t.numel, 0, "alias", 0.0, None, 0, 0))

    def validate(self, rec: Any, blob: memoryview, where: str) -> None:
        if not isinstance(rec.get("name"), str) or not isinstance(rec.get("of"), str) or rec.get("sections") != {}:
            raise FormatError(f"{where}: malformed alias record")

    def resolve(self, rec: dict, stored: dict[str, dict], where: str) -> LayerRecord:
        """The size record of an alias, checked against the records ``stored`` by name."""
        target = stored.get(rec["of"])
        if target is None or rec.get("shape") != target["shape"] or rec.get("dtype") != target["dtype"]:
            raise FormatError(f"{where}: '{rec['name']}' is tied to '{rec['of']}', which the file does not hold "
                              "with that shape and type")
        return LayerRecord(rec["name"], _numel(target), 0, "alias", 0.0, None, 0, 0)


DENSE, SPARSE, SHARED, CODES, QUANT, ALIAS = Dense(), Sparse(), Shared(), Codes(), Quant(), Alias()
#: Every kind a reader knows, by registration order.
KINDS: tuple[FileTensorKind, ...] = (DENSE, SPARSE, SHARED, CODES, QUANT, ALIAS)
#: The kinds the encoder asks, in order; the first that accepts a tensor is preferred (``dense`` accepts all),
#: and stores it unless its values are smaller as ``dense`` or ``sparse`` (:func:`encode_tensor`).
ENCODE_ORDER: tuple[FileTensorKind, ...] = (QUANT, SHARED, CODES, SPARSE, DENSE)
#: the file tensor kinds by name: a new kind is one class here
FILE_TENSOR_KINDS: Registry[FileTensorKind] = Registry("file tensor kind")
for _kind in KINDS:
    FILE_TENSOR_KINDS.register(_kind.name, _kind, help=_kind.help)


def choose_kind(t: TensorInfo) -> FileTensorKind:
    """The kind the encoder prefers for ``t``: the first of :data:`ENCODE_ORDER` that accepts it
    (:func:`encode_tensor` stores it so unless a plain form of the same values is smaller)."""
    return next(kind for kind in ENCODE_ORDER if kind.accepts(t))


def encode_tensor(w: Writer, t: TensorInfo) -> tuple[dict, LayerRecord]:
    """Append ``t`` to the blob in the smallest of its exact forms; return ``(record, LayerRecord)``.

    The preferred kind (:func:`choose_kind`) is written on trial; its values as they
    decode, ``v``, are then also sized as plain ``dense`` (``numel · 4`` bytes for float32)
    and, for float32, as plain ``sparse`` (fp32 values and relative indices, in ``t``'s
    coding and index bits).  The smallest is stored — on a tie the preferred kind, then
    ``sparse`` — so no tensor takes more bytes than its dense or plain sparse form: a tiny
    weight-shared kernel whose ``2^b − 1`` centroids alone outweigh its values is stored as
    ``v``, losing its codebook but no bit of its values.  Before that, a kind whose Huffman
    tables outweigh what they save is tried at fixed width (so a small 16-bit fixed-point
    tensor stays ``quant``, at 2 bytes a value) (``v`` is what the preferred kind
    decodes to; a ``−0.0`` keeps it from the sparse form, which stores zeros as ``+0.0``).
    A plain form is written only when it can be smaller: ``4 · nnz`` bytes bound the sparse
    form from below, so large coded tensors are written once.  A weight-shared tensor with
    an explicit ``shared_layout`` (``"sparse"`` or ``"codes"``, not the default
    ``"smaller"``) is stored in that layout whatever its size: the caller asked for it.
    """
    kind = choose_kind(t)
    if kind is DENSE or (kind in (SHARED, CODES) and t.shared_layout != "smaller"):
        return kind.encode(w, t)
    trial = Writer()
    rec, layer = kind.encode(trial, t)
    best = (layer.size_bytes, trial, rec, layer)
    dense_bytes = t.numel * np.dtype(NUMPY_DTYPES[t.dtype]).itemsize
    if t.coding == "huffman" and kind is not SPARSE and dense_bytes < best[0]:
        # a small tensor's Huffman tables can outweigh its codes: the same kind at fixed width
        # keeps the kind (its grid or codebook) and is tried before the plain forms
        fixed = Writer()
        r, l = kind.encode(fixed, dataclasses.replace(t, coding="fixed"))
        if l.size_bytes < best[0]:
            best = (l.size_bytes, fixed, r, l)
    sparse_possible = kind is not SPARSE and t.dtype == "float32" and t.numel > 0
    if dense_bytes < best[0] or (sparse_possible and 4 * int(np.count_nonzero(t.array)) < best[0]):
        values = kind.decode(rec, memoryview(bytes(trial.blob)), t.name).array
        plain = TensorInfo(t.name, np.ascontiguousarray(values.reshape(t.array.shape)), t.dtype,
                           index_bits=t.index_bits, coding=t.coding, masked=t.masked)
        signed_zero = bool(np.any(np.signbit(values) & (values == 0)))
        if sparse_possible and not signed_zero and 4 * int(np.count_nonzero(values)) < best[0]:
            trial_sparse = Writer()
            r, l = _encode_entries(trial_sparse, plain, None)
            if l.size_bytes < best[0]:
                best = (l.size_bytes, trial_sparse, r, l)
        if dense_bytes < best[0]:
            trial_dense = Writer()
            r, l = DENSE.encode(trial_dense, plain)
            best = (l.size_bytes, trial_dense, r, l)
    _, written, rec, layer = best
    w.absorb(written, rec["sections"])
    return rec, layer


def kind_of(rec: dict, where: str) -> FileTensorKind:
    """The kind a stored tensor's record names (not ``alias``)."""
    name = rec.get("kind")
    kind = FILE_TENSOR_KINDS.get(name) if isinstance(name, str) and name in FILE_TENSOR_KINDS else None
    if kind is None or kind is ALIAS:
        raise FormatError(f"{where}: tensor '{rec['name']}' has an unknown kind or coding")
    return kind


def inferred_codebook(flat: np.ndarray, max_bits: int) -> tuple[np.ndarray, np.ndarray, int] | None:
    """Recover ``(indices, centroids, bits)`` from float32 values with few distinct nonzero values."""
    flat = flat.reshape(-1).astype(np.float32)
    values = np.unique(flat[flat != 0])
    if values.size == 0 or values.size > (1 << max_bits) - 1:
        return None
    bits = max(1, math.ceil(math.log2(values.size + 1)))
    idx = np.zeros(flat.size, np.int64)
    nz = flat != 0
    idx[nz] = np.searchsorted(values, flat[nz]) + 1
    centroids = np.concatenate([values, np.full((1 << bits) - 1 - values.size, values[-1], np.float32)])
    return idx, centroids, bits
