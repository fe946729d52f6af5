"""Compressed weights as a ``torch.Tensor`` subclass: the user's modules run from compressed form.

EIE (Han et al., ISCA'16) computes a layer straight from its pruned, weight-shared form.
To do that inside a model as the user wrote it — subclasses of ``nn.Conv2d`` with their
own ``forward``, ``nn.MultiheadAttention``, ``nn.LSTM``, a custom module calling
``F.linear`` — the runtime does not replace modules: it replaces the *weight*.  A
:class:`CompressedWeight` is a tensor of the dense weight's shape and dtype that holds no
dense storage, only the kernel's packed layouts (:mod:`efficientdl.kernels.cpu`: the
column-partitioned matrix and its row-major twin, a few bits per weight, and the
codebook).  Its ``__torch_function__`` looks the called function up in :data:`SERVED`
(the approach of torchao's tensor subclasses: an ``implements(op)`` table):

* ``F.linear``, ``F.conv1d``/``F.conv2d``, ``F.embedding``, ``torch.matmul``/``mm``/
  ``addmm`` with the weight transposed, the recurrent functions behind ``nn.LSTM``/
  ``nn.GRU``/``nn.RNN`` and ``F.multi_head_attention_forward`` are served from the
  compressed form, each product by the kernel the per-layer dispatcher
  (:mod:`efficientdl.nn.dispatch`) measured fastest;
* anything else (an op no kernel serves, an option a served function does not cover)
  runs on the dense weight, decoded once and kept (``prefer="speed"``) or decoded for the
  call and dropped (``prefer="memory"``), and is recorded with its reason in
  :attr:`CompressedWeight.fallbacks` (gathered in ``model.edl_runtime``).

The weights are for inference: no gradient reaches the codebook through them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..errors import ModelError
from ..kernels import cpu
from .dispatch import Dispatcher, single_sample

#: function → handler(*args, **kwargs); the functions a compressed weight serves itself
SERVED: dict[Callable, Callable] = {}

_aten = torch.ops.aten
_F_LINEAR = torch.nn.functional.linear
#: functions of a tensor's metadata (or its identity) that the wrapper answers without its values
_METADATA = frozenset({
    "__get__", "__set__", "dim", "ndimension", "size", "stride", "numel", "nelement", "element_size",
    "is_floating_point", "is_complex", "is_contiguous", "is_signed", "get_device", "type", "requires_grad_",
    "detach", "detach_", "__repr__", "__format__", "__hash__", "__reduce_ex__", "__deepcopy__", "__setstate__",
    "_has_compatible_shallow_copy_type", "storage_offset", "untyped_storage", "_typed_storage", "data_ptr",
    "__len__"})


def implements(*functions: Callable) -> Callable:
    """Register a handler for ``functions`` in :data:`SERVED` (decorator)."""
    def register(handler: Callable) -> Callable:
        for f in functions:
            SERVED[f] = handler
        return handler
    return register


@dataclass
class _Payload:
    """What every view of one compressed weight shares (a detached copy, a transposed view)."""

    name: str
    shape: tuple[int, ...]
    matrix: cpu.PackedMatrix              # column layout of W as (shape[0], prod(shape[1:]))
    twin: cpu.PackedMatrix                # its row-major twin
    nonzeros: int
    dispatcher: Dispatcher
    dense: dict = field(default_factory=dict)            # dtype → decoded dense weight (prefer="speed")
    chosen: dict = field(default_factory=dict)           # shape class → KernelRow
    times_us: dict = field(default_factory=dict)         # shape class → {kernel: median µs}
    fallbacks: dict = field(default_factory=dict)        # function → reason
    forced_kernel: str | None = None
    errors: dict = field(default_factory=dict)           # shape class → {int8 kernel: relative error}
    derived: dict = field(default_factory=dict)          # kernel-held forms (int8 weight, column blocks): name → (object, bytes)
    row_blocks: dict = field(default_factory=dict)       # (start, stop) → CompressedWeight of those rows
    prepared: dict = field(default_factory=dict)         # exact input key → f(x, bias) (served fast path)


class CompressedWeight(torch.Tensor):
    """A pruned, weight-shared weight held only in compressed form (see the module docstring).

    Args:
        codes: integer cluster indices of the weight's shape (0 = pruned), at least 2-D;
            a convolution's ``(out, in/groups, kh, kw)`` is multiplied as the
            ``(out, in/groups·kh·kw)`` matrix.
        codebook: float ``(K,)`` shared values with ``codebook[0] == 0``.
        name: the tensor's name in the model (for reports and errors).
        dispatcher: the kernel chooser (one per model, so a cache file is read once).
        partitions: row partitions (threads) of the column layout; 0 = numba's threads.

    Example::

        layer = nn.Linear(300, 100)
        layer.weight = nn.Parameter(CompressedWeight(codes, codebook), requires_grad=False)
        y = layer(x)            # F.linear served by the compressed kernels
    """

    _payload: _Payload
    _transposed: bool

    @staticmethod
    def __new__(cls, codes: np.ndarray | None = None, codebook: np.ndarray | None = None, *, name: str = "",
                dispatcher: Dispatcher | None = None, partitions: int = 0, _payload: _Payload | None = None,
                _transposed: bool = False) -> "CompressedWeight":
        if _payload is None:
            codes = np.asarray(codes)
            if codes.ndim < 2:
                raise ModelError(f"{name or 'weight'}: a compressed weight must be at least 2-D, got shape "
                                 f"{codes.shape}")
            flat = codes.reshape(codes.shape[0], -1)
            _payload = _Payload(name, tuple(int(s) for s in codes.shape), cpu.pack(flat, codebook, partitions),
                                cpu.pack_rows(flat, codebook), int(np.count_nonzero(flat)),
                                dispatcher or Dispatcher(cache=False))
        shape = _payload.shape[::-1] if _transposed else _payload.shape
        r = torch.Tensor._make_wrapper_subclass(cls, shape, dtype=torch.float32, device="cpu", requires_grad=False)
        r._payload = _payload
        r._transposed = _transposed
        return r

    def __init__(self, *args, **kwargs) -> None:        # everything happens in __new__
        super().__init__()

    # ----------------------------------------------------------------- what it holds
    @property
    def name(self) -> str:
        return self._payload.name

    @property
    def chosen(self) -> dict:
        """Shape class → the kernel chosen for it."""
        return self._payload.chosen

    @property
    def times_us(self) -> dict:
        """Shape class → ``{kernel: median µs}`` measured when it was chosen."""
        return self._payload.times_us

    @property
    def errors(self) -> dict:
        """Shape class → ``{int8 kernel: max relative error against an exact kernel}`` measured
        when it was chosen (only with ``precision="int8"``)."""
        return self._payload.errors

    @property
    def fallbacks(self) -> dict[str, str]:
        """Functions computed from the decoded dense weight → why."""
        return self._payload.fallbacks

    @property
    def prepared(self) -> dict:
        """Exact input key → the chosen kernel prepared for it (the served functions' fast path)."""
        return self._payload.prepared

    @property
    def forced_kernel(self) -> str | None:
        return self._payload.forced_kernel

    def force(self, kernel: str | None) -> None:
        """Use ``kernel`` (a name of :data:`~efficientdl.nn.dispatch.KERNELS`) for every call from now
        on, or ``None`` to measure again; earlier choices are forgotten."""
        self._payload.forced_kernel = kernel
        self._payload.chosen.clear()
        self._payload.times_us.clear()
        self._payload.errors.clear()
        self._payload.prepared.clear()

    @property
    def matrix(self) -> cpu.PackedMatrix:
        """The column layout of the weight as a ``(rows, cols)`` matrix."""
        return self._payload.matrix

    @property
    def twin(self) -> cpu.PackedMatrix:
        """The row-major twin of the matrix."""
        return self._payload.twin

    @property
    def dispatcher(self) -> Dispatcher:
        return self._payload.dispatcher

    @property
    def nonzeros(self) -> int:
        return self._payload.nonzeros

    def signature(self) -> str:
        """What a kernel's speed depends on: shape, nonzeros, code bits, entry widths."""
        p = self._payload
        return (f"{'x'.join(map(str, p.shape))}|nnz={p.nonzeros}|bits={p.matrix.code_bits}|"
                f"e={p.matrix.entry_bits},{p.twin.entry_bits}{'L' if p.twin.absolute else ''}|P={p.matrix.partitions}")

    def packed_bytes(self) -> int:
        """Resident bytes of the compressed form: both layouts and the codebook."""
        return self._payload.matrix.nbytes + self._payload.twin.nbytes

    def decoded_bytes(self) -> int:
        """Bytes of the extra forms kept for the kernels that need them (0 if none): decoded fp32
        weights, the int8 dense weight of the int8 path, the column-blocked twin."""
        return (sum(t.numel() * t.element_size() for t in self._payload.dense.values())
                + sum(nbytes for _, nbytes in self._payload.derived.values()))

    def dense_bytes(self) -> int:
        """Bytes of the same weight as a dense fp32 tensor."""
        return 4 * int(np.prod(self._payload.shape))

    def codes(self) -> np.ndarray:
        """The cluster indices in the weight's shape (decoded from the packed layout)."""
        return cpu.unpack(self._payload.matrix).reshape(self._payload.shape)

    def dense(self, dtype: torch.dtype = torch.float32, keep: bool | None = None) -> torch.Tensor:
        """The dense weight (in its own orientation) as a plain tensor.

        Args:
            dtype: float32 or float64.
            keep: keep the decoded copy for later calls; default: unless ``prefer="memory"``.
        """
        p = self._payload
        t = p.dense.get(dtype)
        if t is None:
            t = torch.from_numpy(p.matrix.codebook.astype(np.float64)[cpu.unpack(p.matrix)]).to(dtype)
            t = t.reshape(p.shape)
            if keep if keep is not None else p.dispatcher.prefer != "memory":
                p.dense[dtype] = t
        return t.t() if self._transposed else t

    def release_dense(self) -> None:
        """Drop the decoded dense copies (a kernel that needs one decodes it again)."""
        self._payload.dense.clear()
        self._payload.derived.clear()

    def rows(self, start: int, stop: int) -> "CompressedWeight":
        """The rows ``start … stop − 1`` as a compressed weight of their own (packed once, kept),
        e.g. the query, key or value block of an attention's ``in_proj_weight``."""
        p = self._payload
        block = p.row_blocks.get((start, stop))
        if block is None:
            codes = self.codes()[start:stop]
            block = CompressedWeight(codes, p.matrix.codebook, name=f"{p.name}[{start}:{stop}]",
                                     dispatcher=p.dispatcher, partitions=p.matrix.partitions)
            block._payload.forced_kernel = p.forced_kernel
            p.row_blocks[(start, stop)] = block
        return block

    def transposed_view(self) -> "CompressedWeight":
        return CompressedWeight(_payload=self._payload, _transposed=not self._transposed)

    def __repr__(self, *, tensor_contents=None) -> str:
        p = self._payload
        return (f"CompressedWeight(shape={tuple(self.shape)}, nonzeros={p.nonzeros}, code_bits={p.matrix.code_bits}"
                f"{', transposed' if self._transposed else ''})")

    def __deepcopy__(self, memo):
        # the packed layouts are read-only: a copy of the model shares them (and its choices)
        return CompressedWeight(_payload=self._payload, _transposed=self._transposed)

    def __reduce_ex__(self, protocol):
        raise TypeError("a compressed runtime weight is not pickled; save the model with efficientdl.format.save "
                        "or take .dense()")

    # ----------------------------------------------------------------- torch protocol
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func is _F_LINEAR and not kwargs and len(args) == 3:     # the hot path: a prepared F.linear
            x, w, b = args
            if (type(w) is cls and isinstance(x, torch.Tensor) and type(x) is not cls and type(b) is not cls
                    and not w._transposed):
                fast = w._payload.prepared.get((x.shape, x.dtype, x.is_cuda, b is None))
                if fast is not None:
                    return fast(x, b)
        kwargs = kwargs or {}
        handler = SERVED.get(func)
        if handler is not None:
            return handler(*args, **kwargs)
        if getattr(func, "__name__", "") in _METADATA:   # shape, dtype, detach, repr, …: the wrapper answers
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs)
        return fallback(func, args, kwargs, "no compressed kernel for this function")

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (_aten.detach.default, _aten.alias.default):
            w = args[0]
            return CompressedWeight(_payload=w._payload, _transposed=w._transposed)
        if func is _aten._to_copy.default and _is_noop_copy(args[0], kwargs):
            return args[0]
        out = fallback(func, args, kwargs, f"no compressed kernel for {func}")
        # a view of the decoded weight must not alias it (its version counter is the wrapper's)
        return out.clone() if func.is_view and isinstance(out, torch.Tensor) else out


def _is_noop_copy(w: CompressedWeight, kwargs: dict) -> bool:
    dtype, device = kwargs.get("dtype"), kwargs.get("device")
    return (dtype in (None, torch.float32) and (device is None or torch.device(device).type == "cpu")
            and kwargs.get("layout") in (None, torch.strided))


def _name_of(func: Any) -> str:
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or str(func)
    return name.replace("TensorBase.", "Tensor.")


def _weights_in(obj: Any):
    if isinstance(obj, CompressedWeight):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _weights_in(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _weights_in(o)


def _decoded(obj: Any, dtype: torch.dtype | None) -> Any:
    if isinstance(obj, CompressedWeight):
        return obj.dense(dtype or torch.float32)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_decoded(o, dtype) for o in obj)
    if isinstance(obj, dict):
        return {k: _decoded(v, dtype) for k, v in obj.items()}
    return obj


def fallback(func: Callable, args: tuple, kwargs: dict, reason: str) -> Any:
    """Run ``func`` on the dense weights of its compressed arguments and record why.

    Each compressed weight among the arguments notes ``func`` and ``reason`` in its
    :attr:`CompressedWeight.fallbacks`; it is decoded once and kept unless the model
    prefers memory (then decoded for this call only).
    """
    dtype = next((a.dtype for a in _tensors(args, kwargs) if not isinstance(a, CompressedWeight)
                  and a.is_floating_point()), None)
    for w in _weights_in((args, kwargs)):
        w.fallbacks.setdefault(_name_of(func), reason)
    with torch._C.DisableTorchFunctionSubclass():
        return func(*_decoded(args, dtype), **_decoded(kwargs, dtype))


def _tensors(args: tuple, kwargs: dict):
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, torch.Tensor):
            yield a
        elif isinstance(a, (list, tuple)):
            yield from (b for b in a if isinstance(b, torch.Tensor))


def check_input(w: CompressedWeight, x: Any, what: str) -> torch.Tensor:
    """The input ``x`` of a product with ``w`` as a CPU float tensor, or a one-line :class:`ModelError`."""
    if not isinstance(x, torch.Tensor):
        raise ModelError(f"{w.name or 'compressed weight'}: {what} needs a tensor input, got {type(x).__name__}")
    if isinstance(x, CompressedWeight):
        raise ModelError(f"{w.name or 'compressed weight'}: {what} of two compressed weights is not supported")
    if x.device.type != "cpu":
        raise ModelError(f"{w.name or 'compressed weight'}: input is on {x.device}, the compressed weight on cpu")
    if x.dtype not in (torch.float32, torch.float64):
        raise ModelError(f"{w.name or 'compressed weight'}: {what} needs float32 or float64 input, got "
                         f"{str(x.dtype).removeprefix('torch.')}")
    return x.detach()


# ------------------------------------------------------------------------- the model-level API
@dataclass
class RuntimeReport:
    """What the compressed runtime did to a model (``model.edl_runtime``).

    Attributes:
        compressed: tensor names held as :class:`CompressedWeight` when the model was loaded.
        dense: tensor names left as (or made) dense parameters → why.
        weights: tensor name → its :class:`CompressedWeight` (also for those :func:`settle` made dense).
        owners: tensor name → ``(module, attribute)`` holding it.
        prefer: ``"speed"`` or ``"memory"``.
        precision: ``"fp32"`` or ``"int8"`` (see :func:`to_runtime`).
        settled: what :func:`settle` measured (``None`` until it ran).
    """

    compressed: list[str]
    dense: dict[str, str]
    weights: dict[str, CompressedWeight]
    owners: dict[str, tuple[nn.Module, str]] = field(default_factory=dict)
    prefer: str = "speed"
    precision: str = "fp32"
    settled: dict | None = None
    first_call_hook: Any = None
    chains: Any = None                       # the nn.chain.ChainReport of the last settle

    def fallbacks(self) -> dict[str, dict[str, str]]:
        """Tensor → {function computed from the decoded dense weight → why} (only those that fell back)."""
        return {name: dict(w.fallbacks) for name, w in self.weights.items() if w.fallbacks}

    def force(self, kernels: dict[str, str | None] | str | None) -> None:
        """Force a kernel per tensor (``{"fc1.weight": "dense"}``), or one for all (a name, ``None`` to measure)."""
        items = kernels.items() if isinstance(kernels, dict) else ((n, kernels) for n in self.weights)
        for name, kernel in items:
            if name not in self.weights:
                raise ModelError(f"no compressed weight named {name!r}; one of {', '.join(self.weights)}")
            self.weights[name].force(kernel)

    def served_compressed(self) -> list[str]:
        """Tensors the model computes from compressed form now (not made dense by :func:`settle`)."""
        return [n for n in self.compressed if isinstance(self._current(n), CompressedWeight)]

    def _current(self, name: str):
        module, attr = self.owners[name]
        return getattr(module, attr)

    def layers(self) -> list[dict]:
        """One row per compressed tensor: shape, nonzeros, bits, resident and dense bytes, and per
        shape class seen so far the chosen kernel with every candidate's measured median µs."""
        out = []
        for name, w in self.weights.items():
            held = isinstance(self._current(name), CompressedWeight) if name in self.owners else True
            out.append({"name": name, "shape": list(w._payload.shape), "nonzeros": w.nonzeros,
                        "code_bits": w.matrix.code_bits, "held": "compressed" if held else "dense parameter",
                        "packed_bytes": w.packed_bytes() if held else 0,
                        "decoded_bytes": w.decoded_bytes() if held else w.dense_bytes(),
                        "dense_bytes": w.dense_bytes(), "forced": w.forced_kernel,
                        "choices": {k: {"kernel": r.name, "times_us": w.times_us.get(k, {}),
                                        **({"errors": w.errors[k]} if k in w.errors else {})}
                                    for k, r in w.chosen.items()},
                        "fallbacks": dict(w.fallbacks)})
        return out

    def resident_bytes(self) -> int:
        """Bytes the weights of :attr:`compressed` hold now: packed layouts plus decoded copies."""
        return sum(r["packed_bytes"] + r["decoded_bytes"] for r in self.layers())

    def to_dict(self) -> dict:
        return {"prefer": self.prefer, "precision": self.precision, "compressed": list(self.compressed),
                "served_compressed": self.served_compressed(), "dense": dict(self.dense),
                "fallbacks": self.fallbacks(), "layers": self.layers(), "resident_bytes": self.resident_bytes(),
                "settled": self.settled, "chains": None if self.chains is None else self.chains.to_dict()}

    def hold(self, name: str, compressed: bool) -> None:
        """Hold tensor ``name`` as its compressed weight, or as a plain dense parameter."""
        module, attr = self.owners[name]
        w = self.weights[name]
        value = w if compressed else w.dense(torch.float32, keep=False).clone()
        setattr(module, attr, nn.Parameter(value, requires_grad=False))


def _median_model_us(model: nn.Module, args: tuple, rounds: int) -> float:
    import statistics
    import time

    times = []
    for _ in range(rounds):
        start = time.perf_counter_ns()
        model(*args)
        times.append((time.perf_counter_ns() - start) / 1e3)
    return statistics.median(times)


#: settle keeps a model compressed only where it ran at most this share of the dense time
#: (median of the rounds' paired ratios): a gain smaller than the timing noise is not one.  On
#: a shared 2-core AMD EPYC (Zen 3, family 25 model 1, AVX2) the same dense model timed twice
#: differed by up to 7%, and a 3-layer LSTM that settle measured 1.09× faster at batch 8 ran
#: 0.78× in the next run.
SETTLE_MARGIN = 0.95


def settle(model: nn.Module, *example: Any, rounds: int = 15) -> dict:
    """Measure a compressed runtime model on an example input and keep it never slower than dense.

    1. One forward pass on ``example``: every served product measures its candidate
       kernels for the shape classes it meets and keeps the fastest (per layer).
    2. ``prefer="speed"``: a weight whose every choice was the dense kernel becomes a
       plain dense parameter again, so it pays no dispatch at all.
    3. Runs of two or more compressed linear layers (with their activations) are compiled
       into one call each for batch-1 inputs (:mod:`efficientdl.nn.chain`), and every
       ``nn.BatchNorm2d`` is computed as its per-channel affine (:mod:`efficientdl.nn.batchnorm`).
    4. The whole model, timed in interleaved rounds against the same model with every
       weight dense.  If the compressed form ran more than :data:`SETTLE_MARGIN` of the
       dense time (the median of the rounds' paired ratios), every weight whose chosen
       kernel decodes it is given its fastest measured kernel that does not, and the model is
       timed again (``decision="compressed, no decoded weight"``): per-layer timings of a few
       calls can pick dense where it only tied.  If that too is slower, every weight is made
       dense and the report says so.  With ``prefer="memory"`` nothing is made
       dense and no decoded copy is kept (the dense rounds decode for the timing only):
       the times are reported.

    Args:
        model: a model from :func:`to_runtime` (``format.load(..., runtime="compressed")``).
        example: the positional inputs of one forward pass (a representative batch).
        rounds: interleaved timing rounds of step 4.

    Returns:
        ``{"compressed_us", "dense_us", "speedup", "paired_ratio", "decision", "made_dense",
        "chains"}`` (also stored as ``model.edl_runtime.settled``).
    """
    report = getattr(model, "edl_runtime", None)
    if not isinstance(report, RuntimeReport):
        raise ModelError("settle needs a model loaded with runtime='compressed'")
    if report.first_call_hook is not None:       # settled now: the first call need not do it
        report.first_call_hook.remove()
        report.first_call_hook = None
    with torch.inference_mode(False):            # parameters are swapped (not allowed on inference tensors)
        return _settle(model, report, example, rounds)


def _per_layer_or_chained(model: nn.Module, report: "RuntimeReport", example: tuple, names: list[str],
                          dense_choices: list[str], rounds: int) -> list[str]:
    """The weights to make dense: those whose every kernel choice was dense, unless keeping the
    ones that join a compiled chain compressed (one call for the run instead of one per layer,
    which the per-layer timing cannot see) is faster end to end — timed both ways, interleaved."""
    trial = _chain.install(model)                # every weight still compressed here
    chained = {n for c in trial.chains for n in c.layers}
    _chain.uninstall(model)
    candidates = [dense_choices]
    if chained & set(dense_choices):
        candidates.append([n for n in dense_choices if n not in chained])

    def hold(dense: list[str]) -> None:
        _chain.uninstall(model)
        for n in names:
            report.hold(n, compressed=n not in dense)
        _chain.install(model)

    if len(candidates) > 1:
        times: list[list[float]] = [[] for _ in candidates]
        for _ in range(max(3, rounds // 3)):
            for i, dense in enumerate(candidates):
                hold(dense)
                times[i].append(_median_model_us(model, example, 3))
        import statistics

        candidates = [min(zip(candidates, times), key=lambda ct: statistics.median(ct[1]))[0]]
    _chain.uninstall(model)
    for n in names:
        report.hold(n, compressed=n not in candidates[0])
    return list(candidates[0])


def _paired_rounds(model: nn.Module, report: "RuntimeReport", example: tuple, served: list[str],
                   rounds: int) -> tuple[list[float], list[float]]:
    """``(compressed, dense)``: median µs of the model as it is and with ``served`` made dense
    (and its own forward), in ``rounds`` interleaved rounds, so the machine's drift hits both alike."""
    fused_forward = model.__dict__.get("forward")
    model(*example)                              # warm
    comp, dense = [], []
    for _ in range(rounds):
        comp.append(_median_model_us(model, example, 3))
        for n in served:
            report.hold(n, compressed=False)
        model.__dict__.pop("forward", None)      # the dense rounds run the model's own forward
        affines = _batchnorm.uninstall(model)    # and its BatchNorm modules' own
        dense.append(_median_model_us(model, example, 3))
        for n in served:
            report.hold(n, compressed=True)
        _batchnorm.restore(affines)
        if fused_forward is not None:
            model.forward = fused_forward
    return comp, dense


def _paired_ratio(comp: list[float], dense: list[float]) -> float:
    """Each round times both forms back to back: the median of the paired ratios is the estimate."""
    import statistics

    return statistics.median(c / d for c, d in zip(comp, dense))


def _without_decoding(report: "RuntimeReport", names: list[str]) -> bool:
    """Give every choice of a kernel that decodes the weight to the fastest measured kernel that
    does not (``times_us`` holds every candidate's time); ``True`` if any choice changed."""
    from .dispatch import kernel_row

    changed = False
    for n in names:
        w = report.weights[n]
        if w.forced_kernel:
            continue
        for key, row in list(w.chosen.items()):
            if not row.decodes:
                continue
            lean = [(t, name) for name, t in w.times_us.get(key, {}).items()
                    if t == t and (r := kernel_row(row.op, name)) is not None and not r.decodes]
            if lean:
                w.chosen[key] = kernel_row(row.op, min(lean)[1])
                w.prepared.clear()
                changed = True
    return changed


def _settle(model: nn.Module, report: "RuntimeReport", example: tuple, rounds: int) -> dict:
    names = [n for n in report.compressed if n in report.owners]
    _chain.uninstall(model)                      # settle again from the compressed form, per layer
    for n in names:
        report.hold(n, compressed=True)
        report.dense.pop(n, None)
    with torch.no_grad():                        # (not inference_mode: parameters are swapped below)
        model(*example)
        made_dense = []
        if report.prefer == "speed":
            dense_choices = [n for n in names if report.weights[n].chosen and not report.weights[n].forced_kernel
                             and all(r.name == "dense" for r in report.weights[n].chosen.values())]
            made_dense = _per_layer_or_chained(model, report, example, names, dense_choices, rounds)
            for n in made_dense:
                report.dense[n] = "dense was the fastest kernel for every input measured"
        served = [n for n in names if n not in made_dense]
        chains = _chain.install(model) if served else _chain.ChainReport(reason="no layer is served compressed")
        comp, dense = _paired_rounds(model, report, example, served, rounds)
        ratio = _paired_ratio(comp, dense) if served else 1.0
        decision = "compressed" if served else "dense"
        if report.prefer == "speed" and ratio > SETTLE_MARGIN and _without_decoding(report, names):
            # the per-layer choices lost end to end: try every weight on its fastest kernel that
            # decodes nothing (what prefer="memory" runs), timed end to end against dense as well
            # (per-layer timings, a few calls each, can pick dense where it only tied)
            _chain.uninstall(model)
            for n in names:
                report.hold(n, compressed=True)
                report.dense.pop(n, None)
                report.weights[n].release_dense()
            made_dense, served = [], list(names)
            chains = _chain.install(model)
            comp, dense = _paired_rounds(model, report, example, served, rounds)
            ratio = _paired_ratio(comp, dense)
            decision = "compressed, no decoded weight"
    import statistics

    comp_us, dense_us = statistics.median(comp), statistics.median(dense)
    if report.prefer == "speed" and served and ratio > SETTLE_MARGIN:
        for n in served:
            report.hold(n, compressed=False)
            report.dense[n] = (f"the compressed model ran {ratio:.2f}× the dense time end to end "
                               f"(kept only at ≤ {SETTLE_MARGIN})")
        made_dense += served
        decision = "dense"
        _chain.uninstall(model)
        chains = _chain.ChainReport(reason="the model is dense (slower compressed end to end)")
    for n in made_dense:                         # their dense parameter replaces any decoded copy
        report.weights[n]._payload.dense.clear()
    for c in chains.chains:
        # a chained layer measured only one sample at a time is computed by its chain from the
        # packed form: a decoded copy its batch-1 choice made would be held for nothing
        for n in c.layers:
            w = report.weights[n]
            if all(single_sample(key) for key in w.chosen):
                w.release_dense()
    report.chains = chains
    result = {"compressed_us": comp_us, "dense_us": dense_us, "speedup": dense_us / comp_us,
              "paired_ratio": ratio, "decision": decision,
              "made_dense": made_dense, "chains": chains.to_dict()}
    report.settled = result
    return result


def to_runtime(model: nn.Module, codebooks: dict[str, tuple[np.ndarray, np.ndarray]], partitions: int = 0,
               prefer: str = "speed", cache: Any = None, settle_on_first_call: bool = True,
               precision: str = "fp32") -> nn.Module:
    """Hold the weight-shared tensors of a decoded model as :class:`CompressedWeight` in place.

    The modules are left as they are (the user's classes, their ``forward``); every
    parameter with a codebook of at least two dimensions becomes a compressed weight,
    whichever module owns it (``Linear``, any ``Conv``, ``Embedding``, ``LSTM``/``GRU``
    gate matrices, ``MultiheadAttention.in_proj_weight``, a custom module's parameter).

    Args:
        model: a decoded model (its weights as in the file).
        codebooks: ``{"<module>.<param>": (codes, codebook)}`` as
            :class:`efficientdl.format.Container` gives them.
        partitions: row partitions of the column layout; 0 = numba's thread count.
        prefer: ``"speed"`` (each layer's fastest kernel, dense included) or
            ``"memory"`` (never keep a decoded dense weight).
        cache: the per-machine choice cache (see :class:`~efficientdl.nn.dispatch.Dispatcher`).
        precision: ``"fp32"`` — every product exact (in the input's precision); ``"int8"`` —
            linear products may also run on int8 activations (quantized per call, one
            symmetric scale per sample) and int8 weights with int32 sums, sparse or dense
            (torch's quantized linear), where measured faster; each layer's error against
            the exact product is reported (``model.edl_runtime.layers()``, ``errors``).
        settle_on_first_call: with ``prefer="speed"``, the model's first forward call first
            runs :func:`settle` on its input (the user's own batch), so the model is never
            slower than dense without another step; that call takes longer (it measures).

    Returns:
        The model in eval mode, with ``model.edl_runtime`` a :class:`RuntimeReport`.
    """
    dispatcher = Dispatcher(prefer, cache, precision)
    modules = dict(model.named_modules())
    compressed, dense, weights, owners = [], {}, {}, {}
    for tensor_name, (codes, codebook) in codebooks.items():
        module_name, _, attr = tensor_name.rpartition(".")
        module = modules.get(module_name)
        if module is None or attr not in module._parameters:
            dense[tensor_name] = "not a parameter of a module"
            continue
        if np.ndim(codes) < 2:
            dense[tensor_name] = "1-D (a bias or a norm's scale): no product to serve"
            continue
        if tuple(np.shape(codes)) != tuple(module._parameters[attr].shape):
            raise ModelError(f"{tensor_name}: codes shape {tuple(np.shape(codes))} does not match the parameter "
                             f"{tuple(module._parameters[attr].shape)}")
        w = CompressedWeight(codes, codebook, name=tensor_name, dispatcher=dispatcher, partitions=partitions)
        setattr(module, attr, nn.Parameter(w, requires_grad=False))
        compressed.append(tensor_name)
        weights[tensor_name] = w
        owners[tensor_name] = (module, attr)
    model.edl_runtime = report = RuntimeReport(compressed, dense, weights, owners, prefer, precision)
    if settle_on_first_call and prefer == "speed" and compressed:
        def first_call(module, args, kwargs):
            if not kwargs and args:              # settle on the user's own first batch, then step aside
                settle(module, *args)
            elif report.first_call_hook is not None:
                report.first_call_hook.remove()
                report.first_call_hook = None
        report.first_call_hook = model.register_forward_pre_hook(first_call, with_kwargs=True)
    return model.eval()


from . import served as _served  # noqa: E402,F401  (registers the served functions and kernels)
from . import batchnorm as _batchnorm  # noqa: E402  (settle computes BatchNorm as affines with the chains)
from . import chain as _chain  # noqa: E402  (settle compiles chains of compressed linear layers)
