"""Per-layer kernel dispatch: one table of (condition, kernel) rows, chosen by measurement.

A compressed weight (:class:`efficientdl.nn.weights.CompressedWeight`) can be multiplied
in several correct ways, and which is fastest depends on the layer (its shape, density
and bits), on the input (one sample, a batch, a sequence of tokens, a convolution's patch
matrix) and on the machine.  Rather than guessing, the runtime measures — the approach
of autotuners such as FFTW's planner ("measure") and cuDNN's ``benchmark`` mode:

* every kernel is one :class:`KernelRow` of :data:`KERNELS`: the operation it serves
  (``"linear"``, ``"conv2d"``, ``"embedding"``), a condition on the call (a 1×1
  convolution, a grouped one, …), the function that computes it, and whether it needs
  the decoded dense weight in memory (``decodes``).  A new kernel joins by
  :func:`register_kernel`; nothing else branches on kernels;
* a call's *shape class* (:func:`shape_class`) is its operation and the number of
  right-hand columns bucketed by powers of four (1; 2–4; 5–16; …) plus the input's
  trailing shape — batch 1, small batches and token sequences, patch matrices fall in
  different classes;
* the first call of a class runs every applicable kernel (one warm-up, then
  :data:`MEASURE_REPEATS` rounds timing each once in turn, after an untimed call of its own;
  median) and keeps the fastest; the choice is
  stored on the weight and in a per-machine JSON cache
  (``$EDL_CACHE_DIR`` or ``~/.cache/efficientdl``, keyed by
  :func:`efficientdl.core.machine.machine_key`), so it is deterministic from then on;
* ``prefer="memory"`` drops the rows that decode; a forced kernel (:meth:`force`)
  overrides the measurement;
* ``precision="int8"`` admits the rows marked ``approximate`` (int8 activations and
  weights, :data:`PRECISIONS`) beside the exact ones; the measurement still picks the
  fastest, so an exact kernel is kept where int8 does not pay.  For every approximate
  candidate the error against an exact kernel's output on the measured call is recorded
  (``weight.errors``) and reported.

Since the dense product (``decodes=True``) is itself a row, the chosen kernel is never
slower than dense torch on the measured class, up to the timing noise.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import ModelError

#: timing rounds (one call of every candidate each) when a shape class is first seen, after one warm-up
MEASURE_REPEATS = 5
#: prepared kernels kept per weight (one per exact input shape)
MAX_PREPARED = 64
#: a candidate whose timed calls take longer than this (µs) is timed twice only
MEASURE_LONG_US = 20_000.0
#: ``"fp32"``: exact kernels only (the products in the input's precision); ``"int8"``: also
#: the approximate rows, which compute on int8 activations and int8 weights
PRECISIONS = ("fp32", "int8")


@dataclass
class Call:
    """One product to compute: the weight, the input and the operation's arguments.

    Attributes:
        op: ``"linear"``, ``"conv2d"`` or ``"embedding"``.
        weight: the :class:`~efficientdl.nn.weights.CompressedWeight`.
        x: the input tensor (already validated: dtype, device, trailing shape).
        bias: optional bias tensor.
        args: the operation's other arguments (conv: stride, padding, dilation, groups;
            embedding: padding_idx).
        columns: right-hand columns of the product (tokens × batch, or output positions × batch).
    """

    op: str
    weight: Any
    x: torch.Tensor
    bias: torch.Tensor | None = None
    args: dict = field(default_factory=dict)
    columns: int = 1


@dataclass(frozen=True)
class KernelRow:
    """A row of the dispatch table.

    Attributes:
        name: the kernel's name (reported, forced, cached).
        op: the operation it serves.
        condition: ``condition(call) -> bool`` — whether it can compute this call.
        run: ``run(call) -> torch.Tensor``.
        decodes: it needs the dense weight decoded in memory (excluded by ``prefer="memory"``).
        description: one line for reports.
        prepare: optional ``prepare(call) -> f(x, bias)``: the kernel specialised once for
            this exact input shape (its checks, layouts and buffers settled), which later
            calls of that shape use directly — per-call interpreter work costs as much as a
            small layer's product.
        approximate: it rounds its operands (int8): a candidate only with ``precision="int8"``.
        on_chosen: optional ``on_chosen(call, key)``, called once when this row becomes the
            weight's choice for the shape class ``key`` (measured or from the cache) — for a row
            that also reads another weight's packed form and must say so on it.
    """

    name: str
    op: str
    condition: Callable[[Call], bool]
    run: Callable[[Call], torch.Tensor]
    decodes: bool = False
    description: str = ""
    prepare: Callable[[Call], Callable] | None = None
    approximate: bool = False
    on_chosen: Callable[[Call, str], None] | None = None


#: the dispatch table; rows are tried in order, the measurement picks among those that apply
KERNELS: list[KernelRow] = []


def kernel_row(op: str, name: str) -> KernelRow | None:
    """The row of :data:`KERNELS` named ``name`` for ``op``, or ``None``."""
    return next((r for r in KERNELS if r.op == op and r.name == name), None)


def register_kernel(row: KernelRow) -> KernelRow:
    """Add a kernel to :data:`KERNELS` (a name may serve one op only once)."""
    if any(r.name == row.name and r.op == row.op for r in KERNELS):
        raise ValueError(f"kernel {row.name!r} for {row.op} is already registered")
    KERNELS.append(row)
    return row


def kernel_names(op: str) -> list[str]:
    """Names of the kernels that serve ``op``."""
    return [r.name for r in KERNELS if r.op == op]


def single_sample(key: str) -> bool:
    """Whether the shape class ``key`` (from :func:`shape_class`) is one of single-sample calls.

    >>> single_sample("linear|n=1|300|float32"), single_sample("linear|n=5-16|300|float32")
    (True, False)
    """
    return key.split("|", 2)[1] == "n=1"


def shape_class(call: Call) -> str:
    """The call's shape class: ``op``, the columns bucketed by powers of four, the input's trailing shape.

    >>> shape_class(Call("linear", None, torch.zeros(1, 300), columns=1))
    'linear|n=1|300|float32'
    """
    n = call.columns
    bucket = 1
    while bucket < n:
        bucket *= 4
    label = "1" if n <= 1 else f"{bucket // 4 + 1}-{bucket}"
    if call.op == "conv2d":
        trailing = "x".join(str(s) for s in call.x.shape[1:])
    elif call.op == "recurrent":
        trailing = f"{call.args['mode']}|T={call.x.shape[0]}|{call.x.shape[-1]}"
    elif call.op == "embedding":
        trailing = str(call.weight.shape[1])
    else:
        trailing = str(call.x.shape[-1])
    extra = ""
    if call.op == "conv2d":
        extra = "|" + ",".join(f"{k}={call.args[k]}" for k in ("stride", "padding", "dilation", "groups"))
    return f"{call.op}|n={label}|{trailing}{extra}|{str(call.x.dtype).removeprefix('torch.')}"


def _median_us_interleaved(rows: list["KernelRow"], call: Call) -> dict[str, float]:
    """``{kernel: median µs}`` of the candidates timed in turn, one call each per round.

    Each runs once untimed first (compiles, faults pages in).  Then :data:`MEASURE_REPEATS`
    rounds time one call of every candidate, so a drift of the machine's speed reaches all
    candidates alike.  Within a round each timed call follows an untimed call of the same
    kernel: that one absorbs the thread pool the previous library left spinning (numba's,
    torch's) and brings the kernel's own data back into the cache, as when a layer runs
    repeatedly — timed straight after another candidate, torch's int8 linear took 2.7–3.5×
    and the sparse kernels up to 1.5× the time they take called again and again (EIE layers,
    batch 1).  A candidate slower than :data:`MEASURE_LONG_US` stops after two
    timed calls.
    """
    runs = {r.name: _timed(r, call) for r in rows}
    for run in runs.values():
        run(call)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(MEASURE_REPEATS):
        for name, run in runs.items():
            if len(times[name]) >= 2 and times[name][-1] > MEASURE_LONG_US:
                continue
            run(call)
            start = time.perf_counter_ns()
            run(call)
            times[name].append((time.perf_counter_ns() - start) / 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


class Dispatcher:
    """Chooses and remembers a kernel per (weight, shape class); see the module docstring.

    Args:
        prefer: ``"speed"`` (measure every applicable kernel, dense included) or
            ``"memory"`` (never decode the dense weight).
        cache: a JSON file of earlier measurements on this machine, ``None`` for the
            default location, ``False`` to measure afresh and store nothing.
        precision: ``"fp32"`` (exact kernels) or ``"int8"`` (int8 kernels admitted too).
    """

    def __init__(self, prefer: str = "speed", cache: str | Path | bool | None = None,
                 precision: str = "fp32") -> None:
        if prefer not in ("speed", "memory"):
            raise ModelError(f"prefer must be 'speed' or 'memory', got {prefer!r}")
        if precision not in PRECISIONS:
            raise ModelError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.prefer = prefer
        self.precision = precision
        self.path = default_cache_path() if cache is None or cache is True else (Path(cache) if cache else None)
        self._cache: dict[str, dict] = _read_cache(self.path) if self.path else {}

    def candidates(self, call: Call) -> list[KernelRow]:
        """The rows of :data:`KERNELS` that can compute ``call`` under this preference."""
        return [r for r in KERNELS if r.op == call.op and r.condition(call)
                and not (r.decodes and self.prefer == "memory")
                and not (r.approximate and self.precision != "int8")]

    def run(self, call: Call, exact_key: Any = None) -> torch.Tensor:
        """Compute ``call`` with the weight's kernel for its shape class (measuring it the first time).

        Args:
            call: the product.
            exact_key: a hashable key of the exact input (shape, dtype, …); when given and
                the chosen row can :attr:`~KernelRow.prepare`, the prepared kernel is kept
                under it in ``weight.prepared`` for the served function's fast path.
        """
        w = call.weight
        key = shape_class(call)
        row = w.chosen.get(key)
        if row is None:
            row = self._choose(call, key)
        if exact_key is not None and row.prepare is not None:
            if len(w.prepared) >= MAX_PREPARED:   # many input shapes (e.g. sequence lengths): start afresh
                w.prepared.clear()
            w.prepared[exact_key] = row.prepare(call)
        return row.run(call)

    def _choose(self, call: Call, key: str) -> KernelRow:
        w = call.weight
        rows = self.candidates(call)
        forced = w.forced_kernel
        if forced is not None:
            rows = [r for r in rows if r.name == forced] or _raise_forced(forced, call, rows)
        if not rows:
            raise ModelError(f"{w.name or 'weight'}: no kernel serves {key} with prefer={self.prefer!r}")
        times: dict[str, float] = {}
        signature = f"{w.signature()}|{key}|{self.prefer}|{self.precision}"
        cached = self._cache.get(signature)
        names = [r.name for r in rows]
        if forced is None and cached and cached.get("choice") in names:
            choice = cached["choice"]
            times = {k: float(v) for k, v in cached.get("times_us", {}).items()}
        else:
            times = _median_us_interleaved(rows, call) if len(rows) > 1 else {rows[0].name: float("nan")}
            choice = forced or min(times, key=times.get)
            if forced is None and self.path is not None:
                self._cache[signature] = {"choice": choice, "times_us": times}
                _write_cache(self.path, self._cache)
        row = rows[names.index(choice)]
        w.chosen[key] = row
        w.times_us[key] = times
        if row.on_chosen is not None:
            row.on_chosen(call, key)
        if any(r.approximate for r in rows):
            w.errors[key] = _errors(rows, self.candidates(call), call)
        if not w.fallbacks:                      # forms made only to be timed are not kept: the chosen
            w.release_dense()                    # kernels make again (once) what they need
        return row


def _errors(rows: list[KernelRow], candidates: list[KernelRow], call: Call) -> dict[str, float]:
    """``{approximate kernel among rows: max |y − y_exact| / max |y_exact|}`` on ``call``, ``y_exact``
    from an exact candidate (every op has one: the sparse product at least), one that keeps no
    decoded weight where there is one."""
    exact = sorted((r for r in candidates if not r.approximate), key=lambda r: r.decodes)
    exact = exact[0] if exact else None
    if exact is None:
        return {}
    reference = exact.run(call).double()
    top = float(reference.abs().max()) or 1.0
    return {r.name: float((r.run(call).double() - reference).abs().max()) / top for r in rows if r.approximate}


def _timed(row: KernelRow, call: Call) -> Callable[[Call], torch.Tensor]:
    """What a later call of this shape will run: the prepared kernel where the row prepares
    one (on the served function's own input, ``call.args["input"]``), else ``row.run``."""
    if row.prepare is None or "input" not in call.args:
        return row.run
    f = row.prepare(call)
    x, b = call.args["input"], call.bias
    return lambda _call: f(x, b)


def _raise_forced(forced: str, call: Call, rows: list[KernelRow]):
    names = kernel_names(call.op)
    if forced not in names:
        raise ModelError(f"{call.weight.name or 'weight'}: unknown kernel {forced!r} for {call.op}; "
                         f"one of {', '.join(names)}")
    raise ModelError(f"{call.weight.name or 'weight'}: kernel {forced!r} cannot compute {shape_class(call)}")


def default_cache_path() -> Path:
    """``$EDL_CACHE_DIR/dispatch-<machine>.json`` (default ``~/.cache/efficientdl``)."""
    from ..core.machine import machine_key

    root = Path(os.environ.get("EDL_CACHE_DIR") or Path.home() / ".cache" / "efficientdl")
    return root / f"dispatch-{machine_key()}.json"


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}                                # absent or damaged: measure again
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, data: dict) -> None:
    from ..core.files import atomic_write
    from ..errors import EdlError

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(data, indent=1, sort_keys=True).encode())
    except (OSError, EdlError):
        pass                                     # a read-only home: the choice still holds for this process
