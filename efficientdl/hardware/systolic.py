"""A TPU-style weight-stationary systolic array (Jouppi et al., ISCA'17; Kung 1982).

The array has ``R × C`` multiply-accumulate cells.  A layer is a matrix product
``Y (M × N) = X (M × K) · W (K × N)`` — for a fully connected layer ``M`` is the batch,
for a convolution (im2col) ``M = batch × H_out × W_out`` and ``K = C_in · kh · kw``.

Weight stationary: ``W`` is cut into ``⌈K/R⌉ × ⌈N/C⌉`` tiles of ``R × C``; a tile is
loaded into the cells (one row per cycle, ``R`` cycles, hidden behind the previous
tile's compute by double buffering, as the TPU's weight FIFO does), then the ``M``
input rows stream through it, skewed by one cycle per array row.  Input row ``m``
enters array row ``r`` at cycle ``m + r`` (cycles counted from 0); activations move one
column right per cycle and partial sums one row down, so the result of row ``m``,
column ``c`` is complete in the bottom row at cycle ``m + (R − 1) + c``.  One tile
therefore takes

    T_tile = M + R + C − 2  cycles      (pipeline fill + stream + drain),

which :func:`simulate_tile` checks by stepping the array cycle by cycle.  Each tile
needs its weights from DRAM (``R · C · bytes``, less for an edge tile) at the device
bandwidth; with double buffering a tile costs ``max(T_tile, T_fetch)`` and the first
fetch is exposed.  The
memory stall is the difference from compute alone.  Small batches give short tiles
(``M`` small), so fetching weights dominates — the TPU paper's reason why its MLPs and
LSTMs run far below the 92 TOPS roof.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from .energy import HardwareError


@dataclass(frozen=True)
class SystolicConfig:
    """A weight-stationary array.  Defaults: TPU v1 (256×256 8-bit MACs at 700 MHz,
    24 MiB unified buffer, 4 MiB accumulators, 34 GB/s DRAM)."""

    rows: int = 256
    cols: int = 256
    clock_hz: float = 700e6
    bandwidth_bytes_per_s: float = 34e9
    weight_bytes: int = 1
    unified_buffer_bytes: int = 24 << 20
    accumulator_bytes: int = 4 << 20

    def __post_init__(self) -> None:
        for name in ("rows", "cols", "weight_bytes"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise HardwareError(f"systolic array: {name} must be a positive integer, got {v!r}")
        for name in ("clock_hz", "bandwidth_bytes_per_s"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 < v < float("inf")):
                raise HardwareError(f"systolic array: {name} must be a positive number, got {v!r}")

    @property
    def peak_ops(self) -> float:
        """Peak operations per second (2 per MAC)."""
        return 2.0 * self.rows * self.cols * self.clock_hz


@dataclass(frozen=True)
class GemmResult:
    """Cycles of one matrix product on the array.

    Attributes:
        m, k, n: the product's dimensions.
        tiles: weight tiles.
        compute_cycles: cycles with weights always ready (Σ T_tile).
        fetch_cycles: cycles to bring all weights from DRAM.
        total_cycles: with double-buffered weight fetch: first fetch + Σ max(T_tile, T_fetch).
        stall_cycles: ``total_cycles − compute_cycles``.
        utilisation: MACs / (total_cycles · R · C).
        seconds: ``total_cycles / clock``.
        bound: ``"memory"`` when fetching the weights takes longer than computing, else ``"compute"``.
        activations_fit: whether the layer's input and output activations fit the unified buffer.
    """

    m: int
    k: int
    n: int
    tiles: int
    compute_cycles: int
    fetch_cycles: int
    total_cycles: int
    stall_cycles: int
    utilisation: float
    seconds: float
    bound: str
    activations_fit: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def tile_cycles(m: int, rows: int, cols: int) -> int:
    """Analytic cycles of one weight tile: ``m + rows + cols − 2`` (0 when there is no input)."""
    return m + rows + cols - 2 if m > 0 else 0


def simulate_gemm(m: int, k: int, n: int, config: SystolicConfig = SystolicConfig()) -> GemmResult:
    """Cycles of ``(m × k) · (k × n)`` on a weight-stationary array (see the module docstring).

    Edge tiles use the whole array's pipeline depth (the skew and drain are fixed by the
    hardware, not by how many cells hold weights).  The accumulators (32-bit) hold
    ``accumulator_bytes / (4 · cols)`` input rows per column block (4096 on the TPU); a
    longer input runs in passes, each streaming every tile again.
    """
    for name, v in (("m", m), ("k", k), ("n", n)):
        if not isinstance(v, (int, np.integer)) or v < 0:
            raise HardwareError(f"GEMM dimension {name} must be a non-negative integer, got {v!r}")
    R, C = config.rows, config.cols
    row_sizes = [R] * (k // R) + ([k % R] if k % R else [])
    col_sizes = [C] * (n // C) + ([n % C] if n % C else [])
    fetches = [math.ceil(kr * nc * config.weight_bytes / config.bandwidth_bytes_per_s * config.clock_hz)
               for kr in row_sizes for nc in col_sizes]          # an edge tile fetches only its weights
    # the accumulators hold 32-bit partial sums of at most `chunk` input rows per column block:
    # longer inputs run in passes, each fetching the weights again
    chunk = max(1, config.accumulator_bytes // (4 * C))
    passes = [min(chunk, m - start) for start in range(0, m, chunk)]
    tiles = len(fetches) * len(passes)
    compute = sum(tile_cycles(mm, R, C) for mm in passes) * len(fetches)
    fetch = sum(fetches) * len(passes)
    total = 0
    if fetches and passes:
        total = fetches[0] + sum(max(tile_cycles(mm, R, C), f) for mm in passes for f in fetches)
    macs = m * k * n
    util = macs / (total * R * C) if total else 0.0
    return GemmResult(m, k, n, tiles, compute, fetch, total, total - compute, util, total / config.clock_hz,
                      "memory" if fetch > compute else "compute",
                      m * (k + n) * config.weight_bytes <= config.unified_buffer_bytes)


def simulate_tile(x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, int]:
    """Step a weight-stationary array cycle by cycle for one tile (the reference model).

    The array has ``R = w.shape[0]`` rows and ``C = w.shape[1]`` columns; cell ``(r, c)``
    holds ``w[r, c]``.  Each cycle, every cell multiplies the activation arriving from
    its left neighbour by its weight, adds the partial sum arriving from above, and
    passes the activation right and the sum down.  Row ``m`` of ``x`` enters array row
    ``r`` at cycle ``m + r`` (the input skew).

    Args:
        x: ``(M, R)`` inputs.
        w: ``(R, C)`` stationary weights.

    Returns:
        ``(y, cycles)``: ``y = x @ w`` as collected at the bottom of the array, and the
        number of cycles until the last result has left the array.
    """
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    M, R = x.shape
    if w.shape[0] != R:
        raise HardwareError(f"tile shapes do not match: x {x.shape}, w {w.shape}")
    C = w.shape[1]
    act = np.zeros((R, C))            # activation register of each cell (after this cycle)
    act_valid = np.full((R, C), -1)   # which input row that activation belongs to (−1: none)
    psum = np.zeros((R, C))
    psum_row = np.full((R, C), -1)
    y = np.zeros((M, C))
    done = 0
    cycle = 0
    while done < M * C:
        # activations move right, partial sums move down (read the previous cycle's registers)
        new_act = np.zeros_like(act)
        new_valid = np.full_like(act_valid, -1)
        new_act[:, 1:], new_valid[:, 1:] = act[:, :-1], act_valid[:, :-1]
        for r in range(R):                             # skewed injection at the left edge
            mm = cycle - r
            if 0 <= mm < M:
                new_act[r, 0], new_valid[r, 0] = x[mm, r], mm
        incoming = np.zeros_like(psum)
        incoming_row = np.full_like(psum_row, -1)
        incoming[1:], incoming_row[1:] = psum[:-1], psum_row[:-1]
        # a cell with a valid activation adds its product to the sum coming from above
        valid = new_valid >= 0
        new_psum = np.where(valid, incoming + new_act * w, 0.0)
        new_psum_row = np.where(valid, new_valid, -1)
        # results leave the bottom row
        for c in range(C):
            if new_psum_row[R - 1, c] >= 0:
                y[new_psum_row[R - 1, c], c] = new_psum[R - 1, c]
                done += 1
        act, act_valid, psum, psum_row = new_act, new_valid, new_psum, new_psum_row
        cycle += 1
    return y, cycle


def layer_gemm(layer, batch: int) -> tuple[int, int, int]:
    """``(M, K, N)`` of a :class:`~efficientdl.hardware.workload.LayerWorkload` at a batch size.

    fc: ``(batch, inputs, outputs)``.  conv (im2col): ``P = macs / weights`` output
    positions, ``N = outputs / P`` channels, ``K = weights / N``, ``M = batch · P``.
    """
    if layer.kind == "conv":
        positions = max(1, layer.macs // max(1, layer.weights))
        n = max(1, layer.output_elements // positions)
        return batch * positions, layer.weights // n, n
    return batch, layer.input_elements, layer.output_elements


def simulate_layers(layers, batch: int = 1, config: SystolicConfig = SystolicConfig()) -> list[dict]:
    """Run each layer's GEMM on the array (layers run one after another, weights from DRAM).

    Returns:
        One dict per layer: its name, ``m``, ``k``, ``n`` and the :class:`GemmResult` fields.
    """
    if batch < 1:
        raise HardwareError(f"batch must be ≥ 1, got {batch}")
    out = []
    for layer in layers:
        m, k, n = layer_gemm(layer, batch)
        out.append({"name": layer.name, **simulate_gemm(m, k, n, config).to_dict()})
    return out
