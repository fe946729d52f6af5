"""A cycle-level model of EIE, the Efficient Inference Engine (Han et al., ISCA'16).

EIE computes ``y = W a`` for a pruned, weight-shared fully connected layer on an array
of ``N`` processing elements (PEs):

* **Storage.** Row ``i`` of ``W`` belongs to PE ``i mod N``.  Each PE stores its slice
  column by column; an entry is a 4-bit virtual weight (codebook index, 0 = zero) and a
  4-bit relative row index (zeros skipped since the previous entry of the column); a
  gap of more than 15 rows is bridged by padding entries (weight 0, each worth 16
  rows).  Column ``j`` of a PE spans entries ``ptr[j] … ptr[j+1] − 1``; the start and
  end pointers come from an even and an odd bank in one cycle.
* **Central control (LNZD).** The input vector is read in groups of ``N``; each cycle
  the leading-non-zero detector finds the next activation ``> 0`` of the group (ReLU
  built in) and broadcasts ``(j, a_j)`` to every PE's activation FIFO — only when no
  FIFO is full (judged on the previous cycle), otherwise it stalls.  Moving on from a
  group whose last position was not broadcast costs a cycle (an all-zero group: one
  cycle).  After the last group comes the bias group (activation 1.0 on the bias
  column).
* **PE.** A FIFO of depth ``D`` holds ``D − 1`` activations (a circular buffer).  A PE
  takes the next activation when its FIFO is not empty and it is idle or on the last
  entry of its current column; then it processes one entry per cycle (sparse-matrix
  read, codebook lookup, multiply, accumulate with bypass).  An empty column costs one
  bubble cycle.
* **Drain.** The arithmetic pipeline writes an entry's result 4 cycles after its
  pointer cycle, so the layer ends 6 cycles after the last entry's pointer cycle (and
  never before cycle 9).

These rules follow the authors' public cycle-level C++ simulator, except its
end-of-layer test, which can stop while FIFOs still hold work; here a layer ends only
when every activation has been processed.  The model computes the layer's output
exactly (float64 accumulation of codebook values × activations), so it is checked
against dense math.

Load-balance efficiency = ideal cycles / cycles, with ideal cycles = effective
non-zeros (nonzero weights met by nonzero activations) / N; the utilisation also counts
padding entries as work.  Energy uses the paper's per-PE
power at 45 nm (9.157 mW: SpmatRead 4.955, PtrRead 1.807, ArithmUnit 1.162, ActRW
1.122, activation queue 0.112 mW) over the simulated time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numba
import numpy as np

from ..kernels import cpu
from .energy import HardwareError

#: per-PE power at 45 nm, mW (Han et al. ISCA'16, Table II)
PE_POWER_MW = {"spmat_read": 4.955, "ptr_read": 1.807, "arithm_unit": 1.162, "act_rw": 1.122, "act_queue": 0.112}
DRAIN_CYCLES = 6
MIN_CYCLES = 9


@dataclass(frozen=True)
class EIEConfig:
    """EIE's configuration (defaults: the paper's 64 PEs, FIFO depth 8, 800 MHz).

    Attributes:
        pes: processing elements.
        fifo_depth: activation FIFO depth ``D`` (holds ``D − 1`` entries, as a circular buffer).
        index_bits: relative row index bits (a gap ≥ 2^index_bits needs padding).
        weight_bits: virtual weight bits (codebook of 2^weight_bits values).
        sram_line_bits: sparse-matrix SRAM line width (sets the count of line reads).
        clock_hz: clock frequency.
        pe_power_mw: power of each PE component.
    """

    pes: int = 64
    fifo_depth: int = 8
    index_bits: int = 4
    weight_bits: int = 4
    sram_line_bits: int = 64
    clock_hz: float = 800e6
    pe_power_mw: dict = field(default_factory=lambda: dict(PE_POWER_MW))

    def __post_init__(self) -> None:
        checks = [("pes", self.pes, 1), ("fifo_depth", self.fifo_depth, 2), ("index_bits", self.index_bits, 1),
                  ("weight_bits", self.weight_bits, 1), ("sram_line_bits", self.sram_line_bits, 1)]
        for name, v, lo in checks:
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise HardwareError(f"EIE: {name} must be an integer ≥ {lo}, got {v!r}")
        if self.index_bits + self.weight_bits not in (8, 16, 32):
            raise HardwareError("EIE: index_bits + weight_bits must be 8, 16 or 32")
        if not (isinstance(self.clock_hz, (int, float)) and 0 < self.clock_hz < float("inf")):
            raise HardwareError(f"EIE: clock_hz must be a positive number, got {self.clock_hz!r}")


def config_for_codebook(codebook_size: int, **kwargs) -> EIEConfig:
    """An :class:`EIEConfig` whose entries fit a codebook of ``codebook_size`` values:
    4-bit weights and indices (8-bit entries) up to 16 values, else 16-bit entries."""
    bits = max(4, int(codebook_size - 1).bit_length())
    return EIEConfig(weight_bits=bits, index_bits=(8 if bits <= 4 else 16) - bits, **kwargs)


@dataclass(frozen=True)
class EIELayer:
    """A layer in EIE's storage (see the module docstring).

    Attributes:
        rows, cols: shape of ``W``.
        ptr: int64 ``(N, cols + 2)`` entry offsets per PE (column ``cols`` is the bias column).
        entries: per PE concatenated, ``(delta << weight_bits) | code``.
        weight_bits: bits of the code inside an entry.
        codebook: float ``(2^weight_bits,)`` with entry 0 = 0.
        bias: float ``(rows,)``.
    """

    rows: int
    cols: int
    ptr: np.ndarray
    entries: np.ndarray
    weight_bits: int
    codebook: np.ndarray
    bias: np.ndarray

    @property
    def pes(self) -> int:
        return self.ptr.shape[0]


def encode_layer(codes: np.ndarray, codebook: np.ndarray, config: EIEConfig = EIEConfig(),
                 bias: np.ndarray | None = None) -> EIELayer:
    """Lay a weight-shared layer out for EIE: rows interleaved over PEs, CSC per PE.

    Args:
        codes: ``(rows, cols)`` cluster indices, 0 = pruned.
        codebook: ``(K,)`` values with ``codebook[0] == 0``, ``K ≤ 2^weight_bits``.
        config: PEs and entry widths.
        bias: optional ``(rows,)`` bias; its nonzero entries form the bias column
            (stored uncoded: only their count matters for timing).

    Returns:
        The :class:`EIELayer`.
    """
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise HardwareError(f"EIE: codes must be 2-D, got shape {codes.shape}")
    codebook = np.asarray(codebook, np.float64).ravel()
    if codebook.size > 1 << config.weight_bits:
        raise HardwareError(f"EIE: {codebook.size} codebook values do not fit {config.weight_bits}-bit weights")
    rows, cols = codes.shape
    n = config.pes
    bias = np.zeros(rows) if bias is None else np.asarray(bias, np.float64).ravel()
    if bias.shape != (rows,):
        raise HardwareError(f"EIE: bias has shape {bias.shape}, expected ({rows},)")
    # rows of PE p are p, p + N, p + 2N, …: reorder so each PE's rows are contiguous
    order = np.concatenate([np.arange(p, rows, n) for p in range(n)]).astype(np.int64)
    counts = np.array([len(range(p, rows, n)) for p in range(n)], np.int64)
    row_start = np.concatenate([[0], np.cumsum(counts)])
    dtype = codes.dtype if np.issubdtype(codes.dtype, np.integer) else np.int64
    bias_codes = (bias[order] != 0).astype(dtype)             # the bias column: one entry per nonzero bias
    table = np.zeros(1 << config.weight_bits)
    table[:codebook.size] = codebook
    full = np.concatenate([codes[order].astype(dtype, copy=False), bias_codes[:, None]], axis=1)
    try:
        # EIE's format: fillers only where a zero run overflows the index (no run padding)
        packed = cpu.pack(full, np.where(np.arange(table.size) == 0, 0.0, 1.0), row_start=row_start,
                          entry_bits=config.index_bits + config.weight_bits, pad_to=1)
    except ValueError as e:
        raise HardwareError(f"EIE: {e}") from None
    ptr = packed.colptr.astype(np.int64)
    # every PE's slice restarts at offset 0 in its own SRAM; keep global offsets for simplicity
    return EIELayer(rows, cols, ptr, packed.entries, config.weight_bits, table, bias)


@dataclass
class EIEResult:
    """What one layer costs on EIE.

    Attributes:
        output: ``y = W a + b`` (ReLU is not applied).
        cycles: total cycles.
        latency_us: ``cycles / clock``.
        busy_cycles: per PE, cycles spent on entries (multiply-accumulates, padding included).
        idle_cycles: per PE, ``cycles − busy``.
        efficiency: load-balance efficiency, ideal cycles / cycles.
        ideal_cycles: effective non-zeros / N — the multiply-accumulates with a nonzero
            weight and a nonzero activation, spread perfectly over the PEs.
        utilisation: ``(Σ busy / N) / cycles`` (padding entries count as work).
        stall_cycles: cycles the broadcast waited for a full FIFO.
        effective_nonzeros: nonzero weights met by nonzero activations.
        entries_processed: Σ busy.
        sram_line_reads: sparse-matrix SRAM lines read (all PEs).
        energy_pj: per component, energy over the layer's time (N PEs).
    """

    output: np.ndarray
    cycles: int
    latency_us: float
    busy_cycles: np.ndarray
    idle_cycles: np.ndarray
    efficiency: float
    ideal_cycles: float
    utilisation: float
    stall_cycles: int
    effective_nonzeros: int
    entries_processed: int
    sram_line_reads: int
    energy_pj: dict

    def summary(self) -> dict:
        d = asdict(self)
        d.pop("output")
        d["busy_cycles"] = {"min": int(self.busy_cycles.min()), "max": int(self.busy_cycles.max()),
                            "mean": float(self.busy_cycles.mean())}
        d.pop("idle_cycles")
        d["energy_total_pj"] = sum(self.energy_pj.values())
        return d


@numba.njit(cache=True)
def _simulate(ptr, entries, weight_bits, codebook, act, cols, depth, line_entries, y_local):  # pragma: no cover
    n = ptr.shape[0]
    cap = depth - 1
    mask = (1 << weight_bits) - 1
    groups = (cols + n - 1) // n                 # activation groups; group `groups` is the bias group
    fifo_col = np.zeros((n, cap), np.int64)
    fifo_val = np.zeros((n, cap))
    head = np.zeros(n, np.int64)
    count = np.zeros(n, np.int64)
    cur_col = np.full(n, -1, np.int64)
    cur_val = np.zeros(n)
    k = np.zeros(n, np.int64)                    # next entry of the current column
    rem = np.zeros(n, np.int64)                  # entries left in the current column
    row = np.zeros(n, np.int64)                  # local row of the last entry (−1 at a column's top)
    busy = np.zeros(n, np.int64)
    useful = np.zeros(n, np.int64)               # entries with a nonzero weight (not padding, not bias)
    last_line = np.full(n, -1, np.int64)
    line_reads = 0
    stalls = 0
    g = -1                                       # loaded group: −1 none yet, > groups: all sent
    src = 0
    last = 0
    last_valid = -1
    s = 0
    while True:
        # ---- propagate: combinational decisions from this cycle's registers
        full = False
        pending = False
        for p in range(n):
            if count[p] == cap:
                full = True
            if count[p] > 0 or (cur_col[p] >= 0 and rem[p] > 0):
                pending = True
        find = False
        pos = n - 1
        col = -1
        val = 0.0
        if 0 <= g < groups:
            q = (last + 1) % n
            while q < n:
                j = g * n + q
                if j < cols and act[j] > 0:
                    find = True
                    pos = q
                    col = j
                    val = act[j]
                    break
                q += 1
        elif g == groups and (last + 1) % n == 0:
            find = True                          # the bias column, activation 1.0
            pos = 0
            col = cols
            val = 1.0
        if g > groups and not pending:
            break
        advance = (not find) or (pos == n - 1 and not full)
        push = find and not full
        if find and full:
            stalls += 1
        any_valid = False
        for p in range(n):
            if cur_col[p] >= 0 and rem[p] > 0:
                any_valid = True
        if any_valid:
            last_valid = s
        # ---- update: registers latch for cycle s + 1
        had = np.zeros(n, np.bool_)
        for p in range(n):
            had[p] = count[p] > 0                # the FIFO head as it was before this cycle's push
        if not (full and find):
            last = pos
        if advance:
            g = src
            src += 1
        if push:
            for p in range(n):
                t = (head[p] + count[p]) % cap
                fifo_col[p, t] = col
                fifo_val[p, t] = val
                count[p] += 1
        for p in range(n):
            valid = cur_col[p] >= 0 and rem[p] > 0
            ready = (not valid) or rem[p] == 1
            if valid:                            # one entry: decode, look up, multiply, accumulate
                e = np.int64(entries[k[p]])
                row[p] += (e >> weight_bits) + 1
                if cur_col[p] < cols:
                    y_local[p, row[p]] += codebook[e & mask] * cur_val[p]
                    if e & mask:
                        useful[p] += 1
                line = (k[p] - ptr[p, 0]) // line_entries
                if line != last_line[p]:
                    line_reads += 1
                    last_line[p] = line
                k[p] += 1
                rem[p] -= 1
                busy[p] += 1
            if ready:
                if had[p]:
                    c = fifo_col[p, head[p]]
                    cur_col[p] = c
                    cur_val[p] = fifo_val[p, head[p]]
                    head[p] = (head[p] + 1) % cap
                    count[p] -= 1
                    k[p] = ptr[p, c]
                    rem[p] = ptr[p, c + 1] - ptr[p, c]
                    row[p] = -1
                else:
                    cur_col[p] = -1
        s += 1
    return busy, useful, stalls, last_valid, line_reads


def simulate(layer: EIELayer, activations: np.ndarray, config: EIEConfig = EIEConfig()) -> EIEResult:
    """Run one layer on the EIE model.

    Args:
        layer: from :func:`encode_layer` with the same ``config.pes``.
        activations: ``(cols,)`` input vector; values ``≤ 0`` are skipped (ReLU input).
        config: FIFO depth, SRAM width, clock and power.

    Returns:
        The :class:`EIEResult` (exact output, cycles, per-PE busy/idle, efficiency, energy).
    """
    act = np.asarray(activations, np.float64).ravel()
    if act.shape != (layer.cols,):
        raise HardwareError(f"EIE: activations have shape {act.shape}, the layer needs ({layer.cols},)")
    if layer.pes != config.pes:
        raise HardwareError(f"EIE: the layer was encoded for {layer.pes} PEs, the configuration has {config.pes}")
    n = config.pes
    local_rows = max(1, -(-layer.rows // n))
    y_local = np.zeros((n, local_rows + 1))
    line_entries = max(1, config.sram_line_bits // (config.index_bits + config.weight_bits))
    busy, useful, stalls, last_valid, line_reads = _simulate(layer.ptr, layer.entries, layer.weight_bits,
                                                     layer.codebook, act, layer.cols, config.fifo_depth,
                                                     line_entries, y_local)
    cycles = max(last_valid + DRAIN_CYCLES, MIN_CYCLES)
    y = np.zeros(layer.rows)
    for p in range(n):
        rows_p = np.arange(p, layer.rows, n)
        y[rows_p] = y_local[p, :rows_p.size]
    y += layer.bias
    seconds = cycles / config.clock_hz
    energy = {name: mw * 1e-3 * n * seconds * 1e12 for name, mw in config.pe_power_mw.items()}
    total_busy, total_useful = int(busy.sum()), int(useful.sum())
    return EIEResult(y, int(cycles), seconds * 1e6, busy, cycles - busy, total_useful / n / cycles,
                     total_useful / n, total_busy / n / cycles, int(stalls), total_useful, total_busy,
                     int(line_reads), energy)


def random_layer(rows: int, cols: int, weight_density: float, activation_density: float, seed: int = 0,
                 bits: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random benchmark layer: ``(codes, codebook, activations)`` (``bits`` ≤ 8).

    Weights are nonzero with probability ``weight_density`` (codes uniform in 1 … 2^bits − 1,
    codebook values uniform in [−1, 1]); activations are nonzero with probability
    ``activation_density``, uniform in (0, 1] (non-negative, as after a ReLU).
    """
    rng = np.random.default_rng(seed)
    k = (1 << bits) - 1
    codes = np.zeros((rows, cols), np.uint8)
    for r0 in range(0, rows, 1024):
        slab = rng.random((min(1024, rows - r0), cols)) < weight_density
        codes[r0:r0 + slab.shape[0]][slab] = rng.integers(1, k + 1, int(slab.sum()))
    codebook = np.concatenate([[0.0], rng.uniform(-1, 1, k)])
    act = np.where(rng.random(cols) < activation_density, rng.uniform(1e-6, 1.0, cols), 0.0)
    return codes, codebook, act


#: The EIE benchmark layers (in × out, weight density, activation density) and the
#: latencies (µs) of the paper's measurement and of the authors' C++ simulator on random
#: layers of these densities (64 PEs, FIFO depth 8, 800 MHz).
BENCHMARK_LAYERS = {
    "Alex-6": (9216, 4096, 0.09, 0.351, 30.3, 29.2),
    "Alex-7": (4096, 4096, 0.09, 0.353, 12.2, 12.8),
    "Alex-8": (4096, 1000, 0.25, 0.375, 9.9, 8.3),
    "VGG-6": (25088, 4096, 0.04, 0.183, 34.4, 25.0),
    "VGG-7": (4096, 4096, 0.04, 0.375, 8.7, 8.4),
    "VGG-8": (4096, 1000, 0.23, 0.411, 8.4, 8.5),
    "NT-We": (4096, 600, 0.10, 1.0, 8.0, 7.5),
    "NT-Wd": (600, 8791, 0.11, 1.0, 13.9, 13.3),
    "NT-LSTM": (1201, 2400, 0.10, 1.0, 7.5, 6.7),
}


#: FIFO depths and PE counts of :func:`simulate_layer`'s sweeps
SWEEP_FIFO_DEPTHS = (2, 4, 8, 16, 32, 64, 128, 256)
SWEEP_PES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def simulate_layer(codes: np.ndarray, codebook: np.ndarray, activations: np.ndarray,
                   bias: np.ndarray | None = None, *, sweep: bool = False,
                   fifo_depths: tuple[int, ...] = SWEEP_FIFO_DEPTHS, pes_list: tuple[int, ...] = SWEEP_PES,
                   **options) -> dict:
    """Simulate one weight-shared layer, check it against dense math, and optionally sweep EIE's design space.

    The configuration is :func:`config_for_codebook` of the codebook's size with
    ``options`` (``pes``, ``fifo_depth``, ``sram_line_bits``, ``clock_hz``).

    * **Dense check.**  ``y_ref = C[codes] · max(a, 0) (+ b)`` in float64 (ReLU on the
      input, as EIE skips activations ≤ 0); ``max_rel_error = max|y − y_ref| / max|y_ref|``.
    * **FIFO sweep** (``sweep=True``): the load-balance efficiency
      ``(effective non-zeros / N) / cycles`` for each activation FIFO depth ``D`` in
      ``fifo_depths``, the storage unchanged (it depends on ``N`` only).  Deeper FIFOs let
      a PE with a long column fall behind without stalling the broadcast (Han et al.
      ISCA'16, the study of FIFO depth).
    * **PE sweep** (``sweep=True``): for each ``N`` in ``pes_list`` the layer is re-laid
      out (rows interleaved over ``N`` PEs) and run; ``speedup(N) = cycles(N₀) / cycles(N)``
      with ``N₀ = pes_list[0]``, and the efficiency as above (the paper's scalability study:
      speedup falls below linear as load imbalance grows).

    Args:
        codes: ``(rows, cols)`` cluster indices, 0 = pruned.
        codebook: ``(K,)`` values with ``codebook[0] == 0``.
        activations: ``(cols,)`` input vector.
        bias: ``(rows,)`` or ``None``.
        sweep: also run the FIFO-depth and PE-count sweeps.
        fifo_depths, pes_list: the sweeps' values.
        **options: :class:`EIEConfig` fields other than the entry widths.

    Returns:
        ``{"rows", "cols", "weight_density", "activation_density", **EIEResult.summary(),
        "max_rel_error"}`` and, with ``sweep``, ``"sweep": {"fifo_efficiency": [(D, eff)],
        "pe_speedup": [(N, speedup)], "pe_efficiency": [(N, eff)]}``.

    Raises:
        HardwareError: a bad option or shape.

    Example:
        >>> codes, codebook, act = random_layer(64, 128, 0.1, 0.5, seed=0)
        >>> r = simulate_layer(codes, codebook, act, pes=4)
        >>> r["max_rel_error"] < 1e-9
        True
    """
    config = config_for_codebook(len(codebook), **options)
    encoded = encode_layer(codes, codebook, config, bias)
    r = simulate(encoded, activations, config)
    dense = np.asarray(codebook, np.float64)[codes] @ np.maximum(activations, 0)
    if bias is not None:
        dense = dense + bias
    error = float(np.abs(r.output - dense).max() / max(1e-30, np.abs(dense).max()))
    result = {"rows": encoded.rows, "cols": encoded.cols,
              "weight_density": float(np.count_nonzero(codes) / max(1, codes.size)),
              "activation_density": float(np.mean(np.asarray(activations) > 0)),
              **r.summary(), "max_rel_error": error}
    if sweep:
        fifo = [(depth, simulate(encoded, activations, config_for_codebook(
            len(codebook), **(options | {"fifo_depth": depth}))).efficiency) for depth in fifo_depths]
        base_cycles, speedup, efficiency = None, [], []
        for pes in pes_list:
            cfg = config_for_codebook(len(codebook), **(options | {"pes": pes}))
            rp = simulate(encode_layer(codes, codebook, cfg, bias), activations, cfg)
            base_cycles = base_cycles or rp.cycles
            speedup.append((pes, base_cycles / rp.cycles))
            efficiency.append((pes, rp.efficiency))
        result["sweep"] = {"fifo_efficiency": fifo, "pe_speedup": speedup, "pe_efficiency": efficiency}
    return result
