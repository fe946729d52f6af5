"""Export a compressed model for runtimes that do not read ``.edlz``: ONNX, safetensors, PT2.

Every format holds the *decoded* model — the plain network whose weights are the dense
values of the file (pruned entries zero, shared weights their centroids) — so any runtime
that knows the format computes exactly what :func:`efficientdl.format.load` computes:

* ``onnx``: the model traced by :func:`torch.export.export` and translated by PyTorch's
  ``torch.export``-based ONNX exporter (:func:`torch.onnx.export` with ``dynamo=True``; it
  needs the ``onnx`` and ``onnxscript`` packages).  One input ``input``, outputs
  ``output``…, the batch dimension dynamic (named ``batch``), the other dimensions those
  of the example input.  The file's architecture record and tensor kinds are in the
  model's ``metadata_props``.
* ``safetensors``: the dense state dict (loads with ``model.load_state_dict``) plus the
  compressed form as extra tensors ``NAME::codebook`` (float32, entry 0 is the pruned
  zero) and ``NAME::indices`` (uint8 up to 8 bits, int16 up to 15, int32 for 16; in
  the weight's shape, so ``codebook[indices.long()]`` is the weight) for every
  weight-shared tensor, and ``NAME::mask`` (bool, the weight's shape) for every pruned
  fp32 tensor; string metadata ``edl.arch``, ``edl.tensors`` (per tensor its kind and
  bits), ``edl.meta`` and ``edl.input_shape``, all JSON (needs the ``safetensors``
  package).  Drop the keys containing ``::`` before ``load_state_dict``.
* ``pt2``: the :class:`torch.export.ExportedProgram` written by :func:`torch.export.save`
  (the successor of TorchScript; :func:`torch.export.load` reads it), batch dimension
  dynamic; the same metadata as ``efficientdl.json`` in its extra files.

ONNX and PT2 trace the model on an example input of one sample's shape (``--input-shape``,
else ``meta["input_shape"]`` of the file, else ``(in_channels, input_size, input_size)``
of its architecture record) with a batch of 2.  A model ``torch.export`` cannot trace
(control flow that depends on the data, a batch size fixed in the code) raises a one-line
:class:`~efficientdl.errors.ModelError`; a missing package a
:class:`~efficientdl.errors.DependencyError` naming the ``export`` extra.  The output is
written whole (:func:`efficientdl.format.atomic_write`) or not at all.

Example::

    from efficientdl.format.export import export
    export("lenet300.edlz", "lenet300.onnx", "onnx")
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import os
import re
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ..core.parametrize import plain_copy
from ..errors import DependencyError, ModelError
from .container import Container, atomic_write, load, read

__all__ = ["FORMATS", "INSTALL", "REQUIRES", "ExportResult", "compressed_tensors", "example_input_shape", "export",
           "export_model", "missing_package"]

#: the formats :func:`export` writes, with the file suffix each usually has
FORMATS: dict[str, str] = {"onnx": ".onnx", "safetensors": ".safetensors", "pt2": ".pt2"}
#: the packages (import names) each format needs beyond torch
REQUIRES: dict[str, tuple[str, ...]] = {"onnx": ("onnx", "onnxscript"), "safetensors": ("safetensors",), "pt2": ()}
#: how to install them
INSTALL = "pip install 'efficientdl[export]'"
#: the separator of the compressed-form keys of a safetensors export (``fc1.weight::codebook``)
SEP = "::"
EXAMPLE_BATCH = 2            # not 0 or 1, which torch.export would specialise


@dataclass
class ExportResult:
    """What :func:`export` wrote.

    Attributes:
        path: the file written.
        format: ``onnx``, ``safetensors`` or ``pt2``.
        size_bytes: its size.
        input_shape: one sample's shape the model was traced with (``None`` for safetensors
            when none was known).
        tensors: tensors in the file (safetensors: dense and compressed-form ones; else the
            state-dict tensors of the model).
    """

    path: str
    format: str
    size_bytes: int
    input_shape: list[int] | None
    tensors: int

    def to_dict(self) -> dict:
        """The result as a JSON-serialisable dict."""
        return asdict(self)


# --------------------------------------------------------------------------- dependencies
def missing_package(format: str) -> str | None:
    """The first package ``format`` needs that is not installed (found without importing it), else ``None``.

    Raises:
        ModelError: an unknown format.
    """
    _check_format(format)
    return next((pkg for pkg in REQUIRES[format] if not _installed(pkg)), None)


def _installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):        # a broken install, or sys.modules[package] set to None
        return False


def _check_format(format: str) -> None:
    if format not in FORMATS:
        raise ModelError(f"unknown export format {format!r} (expected one of {', '.join(FORMATS)})")


def _require(format: str) -> None:
    pkg = missing_package(format)
    if pkg is not None:
        raise DependencyError(f"export to {format} needs the '{pkg}' package ({INSTALL})")


# --------------------------------------------------------------------------- the example input
def _shape_or_none(value: Any) -> tuple[int, ...] | None:
    if isinstance(value, (list, tuple)) and value and all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                                                          for d in value):
        return tuple(value)
    return None


def example_input_shape(model: nn.Module | None = None, header: dict | None = None,
                        input_shape: Sequence[int] | None = None) -> tuple[int, ...] | None:
    """One sample's shape (no batch dimension) to trace the model with.

    In order: ``input_shape`` when given; ``meta["input_shape"]`` of the file's
    ``header``; ``(in_channels, input_size, input_size)`` of the architecture record (the
    file's, else ``model.edl_arch``) when it has an ``input_size`` (LeNet-300-100,
    LeNet-5, the LSTM); else ``None``.

    Raises:
        ModelError: ``input_shape`` is not a sequence of positive integers.
    """
    if input_shape is not None:
        shape = _shape_or_none(list(input_shape))
        if shape is None:
            raise ModelError(f"input shape must be positive integers such as 1,28,28, got {input_shape!r}")
        return shape
    header = header if isinstance(header, dict) else {}
    meta = header.get("meta")
    if isinstance(meta, dict) and _shape_or_none(meta.get("input_shape")) is not None:
        return _shape_or_none(meta["input_shape"])
    arch = header.get("arch") if isinstance(header.get("arch"), dict) else getattr(model, "edl_arch", None)
    kwargs = arch.get("kwargs") if isinstance(arch, dict) else None
    if isinstance(kwargs, dict):
        size, channels = kwargs.get("input_size"), kwargs.get("in_channels", 1)
        if _shape_or_none([channels, size]) is not None:
            return (channels, size, size)
    return None


def _example(model: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    """A batch of :data:`EXAMPLE_BATCH` random samples of ``shape`` in the model's float type."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    generator = torch.Generator().manual_seed(0)
    return torch.randn((EXAMPLE_BATCH, *shape), generator=generator).to(dtype)


# --------------------------------------------------------------------------- the compressed form
def compressed_tensors(container: Container) -> dict[str, torch.Tensor]:
    """The compressed form of a file's tensors, as the extra tensors of a safetensors export.

    For every weight-shared tensor (kinds ``shared`` and ``codes``) ``NAME::codebook``, the
    ``2^b`` float32 centroids with entry 0 the zero of pruned weights, and
    ``NAME::indices``, the codebook index of each element in the weight's shape (uint8
    for ``b ≤ 8``, int16 for ``b ≤ 15``, int32 beyond), so that
    ``codebook[indices.long()]`` is the dense weight; for every pruned fp32 tensor
    (kind ``sparse``) ``NAME::mask``, bool, true where the weight is kept (nonzero).

    Args:
        container: the file, read (:func:`efficientdl.format.read`).

    Returns:
        Name → tensor, contiguous CPU tensors that share no memory.
    """
    out: dict[str, torch.Tensor] = {}
    for rec in container.header.get("tensors", []):
        name, kind = rec["name"], rec["kind"]
        if name in container.codebooks:
            indices, codebook = container.codebooks[name]
            bits = int(rec.get("weight_bits") or max(1, int(np.ceil(np.log2(max(codebook.size, 2))))))
            dtype = np.uint8 if bits <= 8 else np.int16 if bits <= 15 else np.int32
            out[f"{name}{SEP}codebook"] = torch.from_numpy(np.array(codebook, np.float32))
            out[f"{name}{SEP}indices"] = torch.from_numpy(np.ascontiguousarray(indices, dtype=dtype))
        elif kind == "sparse":
            out[f"{name}{SEP}mask"] = (container.tensors[name] != 0).contiguous()
    return out


def _tensor_records(container: Container | None) -> dict[str, dict]:
    """Per stored tensor its kind and coding parameters (no sections), for the metadata."""
    if container is None:
        return {}
    keep = ("kind", "dtype", "shape", "weight_bits", "index_bits", "coding", "quant", "of")
    return {rec["name"]: {k: rec[k] for k in keep if k in rec} for rec in container.header.get("tensors", [])}


def _metadata(model: nn.Module, container: Container | None, shape: tuple[int, ...] | None) -> dict[str, str]:
    """String metadata of every format: architecture, per-tensor kinds and bits, file meta, input shape."""
    from .. import __version__

    header = container.header if container is not None else {}
    arch = header.get("arch") if container is not None else getattr(model, "edl_arch", None)

    def text(value: Any) -> str:
        return json.dumps(value, default=str)

    return {"edl.producer": f"efficientdl {__version__}", "edl.arch": text(arch),
            "edl.tensors": text(_tensor_records(container)), "edl.meta": text(header.get("meta")),
            "edl.input_shape": text(list(shape) if shape else None),
            "edl.source": str(container.source) if container is not None and hasattr(container, "source") else ""}


# --------------------------------------------------------------------------- tracing
@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence what tracing and translating print (warnings, log lines, partial graphs on stderr)."""
    names = ["torch", "onnxscript", "onnx_ir"] + [n for n in logging.root.manager.loggerDict
                                                   if n.startswith(("torch", "onnx"))]
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()), \
                contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    line = lines[0] if lines else type(error).__name__
    return line if len(line) <= 300 else line[:297] + "..."


def _trace(model: nn.Module, shape: tuple[int, ...] | None, format: str) -> tuple[torch.export.ExportedProgram,
                                                                                    torch.Tensor]:
    """``torch.export.export`` of ``model`` on an example batch, the batch dimension dynamic."""
    if shape is None:
        raise ModelError(f"export to {format} needs the model's input shape, which the file does not record: "
                         "pass input_shape (--input-shape C,H,W)")
    x = _example(model, shape)
    try:
        with _quiet(), torch.no_grad():
            program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    except Exception as e:  # torch.export raises many types (UserError, guard and constraint errors, ...)
        raise ModelError(f"cannot export the model to {format}: torch.export cannot trace it on input "
                         f"{tuple(x.shape)} ({type(e).__name__}: {_first_line(e)})") from e
    return program, x


# --------------------------------------------------------------------------- the formats
def _onnx_bytes(model: nn.Module, shape: tuple[int, ...] | None, meta: dict[str, str]) -> bytes:
    """The ONNX model (see the module docstring) as bytes."""
    import onnx

    program, x = _trace(model, shape, "onnx")
    try:
        with _quiet():
            outputs = len(program.graph_signature.user_outputs)
            onnx_program = torch.onnx.export(program, (x,), None, input_names=["input"],
                                             output_names=["output"] if outputs == 1 else
                                             [f"output{i}" for i in range(outputs)],
                                             dynamo=True, external_data=False, verbose=False)
            proto = onnx_program.model_proto
    except Exception as e:  # an operator without a translation, ...
        raise ModelError(f"cannot export the model to onnx ({type(e).__name__}: {_first_line(e)})") from e
    _rename_batch_dimension(proto)
    del proto.metadata_props[:]
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    try:
        onnx.checker.check_model(proto)
    except Exception as e:
        raise ModelError(f"cannot export the model to onnx: the ONNX model is invalid ({_first_line(e)})") from e
    return proto.SerializeToString()


def _rename_batch_dimension(proto: Any) -> None:
    """Name the input's symbolic batch dimension ``batch`` wherever it appears in the graph."""
    dims = proto.graph.input[0].type.tensor_type.shape.dim if proto.graph.input else []
    old = dims[0].dim_param if len(dims) and dims[0].HasField("dim_param") else ""
    if not old or old == "batch":
        return
    pattern = re.compile(rf"\b{re.escape(old)}\b")
    for value in (*proto.graph.input, *proto.graph.output, *proto.graph.value_info):
        if value.type.HasField("tensor_type"):
            for dim in value.type.tensor_type.shape.dim:
                if dim.HasField("dim_param"):
                    dim.dim_param = pattern.sub("batch", dim.dim_param)


def _pt2_bytes(model: nn.Module, shape: tuple[int, ...] | None, meta: dict[str, str]) -> bytes:
    """The :func:`torch.export.save` archive of the traced model as bytes."""
    program, _ = _trace(model, shape, "pt2")
    buffer = io.BytesIO()
    try:
        with _quiet():
            torch.export.save(program, buffer, extra_files={"efficientdl.json": json.dumps(meta)})
    except Exception as e:
        raise ModelError(f"cannot export the model to pt2 ({type(e).__name__}: {_first_line(e)})") from e
    return buffer.getvalue()


def _safetensors_bytes(model: nn.Module, container: Container | None, meta: dict[str, str]) -> tuple[bytes, int]:
    """The dense state dict, the compressed form and the metadata as safetensors bytes; and the tensor count."""
    from safetensors.torch import save

    tensors = {name: t.detach().cpu().clone().contiguous() for name, t in model.state_dict().items()}
    if container is not None:
        extra = compressed_tensors(container)
        clash = next((k for k in extra if k in tensors), None)
        if clash is not None:
            raise ModelError(f"cannot export the model to safetensors: the model has a tensor named '{clash}'")
        tensors.update(extra)
    return save(tensors, metadata=meta), len(tensors)


# --------------------------------------------------------------------------- the public calls
def export_model(model: nn.Module, path: str | os.PathLike, format: str, *, container: Container | None = None,
                 input_shape: Sequence[int] | None = None) -> ExportResult:
    """Write ``model`` (the decoded model of ``container``, or any model) in ``format``.

    Args:
        model: the model; parametrizations are folded into a copy (:func:`plain_copy`),
            which is put in eval mode (``model`` itself is left as it is).
        path: the file to write (atomically: a temporary file beside it, then a rename).
        format: ``"onnx"``, ``"safetensors"`` or ``"pt2"`` (see the module docstring).
        container: the compressed file the model was decoded from: its architecture,
            meta and tensor kinds go into the metadata, and (safetensors) its compressed
            form into extra tensors.
        input_shape: one sample's shape to trace with (see :func:`example_input_shape`).

    Returns:
        An :class:`ExportResult`.

    Raises:
        DependencyError: a package the format needs is not installed.
        ModelError: unknown format, no input shape known (onnx, pt2), or a model that
            cannot be exported (one line; the cause is chained).
        FormatError: the file cannot be written.
    """
    _check_format(format)
    _require(format)
    header = container.header if container is not None else None
    shape = example_input_shape(model, header, input_shape)
    plain = plain_copy(model).eval()
    meta = _metadata(plain, container, shape)
    count = len(plain.state_dict())
    if format == "onnx":
        data = _onnx_bytes(plain, shape, meta)
    elif format == "pt2":
        data = _pt2_bytes(plain, shape, meta)
    else:
        data, count = _safetensors_bytes(plain, container, meta)
    atomic_write(path, data)
    return ExportResult(str(path), format, len(data), list(shape) if shape else None, count)


def export(source: str | os.PathLike | Container, path: str | os.PathLike, format: str, *,
           input_shape: Sequence[int] | None = None, model: Any = None) -> ExportResult:
    """Decode a compressed file and write its model in ``format`` (see :func:`export_model`).

    Args:
        source: the ``.edlz`` file, or a :class:`Container` already read.
        path: the file to write.
        format: ``"onnx"``, ``"safetensors"`` or ``"pt2"``.
        input_shape: one sample's shape (default: recorded in the file, see
            :func:`example_input_shape`).
        model: the architecture to decode into, as :func:`efficientdl.format.load` takes
            it (default: the one the file records).

    Returns:
        An :class:`ExportResult`.

    Raises:
        FormatError: the file is missing or corrupt, or the output cannot be written.
        DependencyError, ModelError: as :func:`export_model`.
    """
    _check_format(format)
    _require(format)                      # before the file is decoded
    container = source if isinstance(source, Container) else read(source)
    return export_model(load(container, model=model), path, format, container=container, input_shape=input_shape)
