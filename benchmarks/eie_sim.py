"""The EIE cycle-level model on the paper's nine benchmark layers.

For each layer, random matrices at the paper's densities (4-bit weights, activations
non-negative) are simulated with 64 PEs, FIFO depth 8 and 800 MHz, over several
seeds; the mean latency is compared with the authors' C++ simulator on such random
layers and with the paper's measured latency.  Then the FIFO-depth sweep of the
paper's Figure 8 (load-balance efficiency for Alex-7 and NT-We against the C++
simulator's figures), a scalability sweep over 1–256 PEs, and the time to simulate
Alex-6 (3.4 M non-zeros) on one core.

Usage::

    python benchmarks/eie_sim.py --json runs/bench/eie_sim.json
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numba
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from efficientdl.hardware import eie  # noqa: E402
from efficientdl.report import markdown_table, plots  # noqa: E402

DEPTHS = (2, 4, 8, 16, 64, 256)
# load-balance efficiency of the C++ simulator on random layers at these FIFO depths
REFERENCE_EFFICIENCY = {"Alex-7": (0.69, 0.78, 0.81, 0.82, 0.83, 0.83), "NT-We": (0.33, 0.53, 0.64, 0.67, 0.69, 0.69)}
PES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="random layers per benchmark layer")
    parser.add_argument("--json", type=pathlib.Path, default=ROOT / "runs" / "bench" / "eie_sim.json")
    args = parser.parse_args()
    numba.set_num_threads(1)
    out_dir = args.json.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    config = eie.EIEConfig()
    layers, rows = {}, []
    for name, (cols, n_rows, wd, ad, paper_us, reference_us) in eie.BENCHMARK_LAYERS.items():
        lat, eff = [], []
        for seed in range(args.seeds):
            codes, codebook, act = eie.random_layer(n_rows, cols, wd, ad, seed=seed)
            layer = eie.encode_layer(codes, codebook, config)
            if seed == 0:
                layers[name] = (layer, act)
            r = eie.simulate(layer, act, config)
            if seed == 0 and codes.size <= 40_000_000:
                dense = codebook[codes].astype(np.float64) @ act
                assert np.allclose(r.output, dense, rtol=1e-9, atol=1e-9), name
            lat.append(r.latency_us)
            eff.append(r.efficiency)
        mean = float(np.mean(lat))
        rows.append({"layer": name, "latency_us": mean, "latency_us_seeds": lat, "reference_us": reference_us,
                     "paper_us": paper_us, "ratio_to_reference": mean / reference_us, "efficiency": float(np.mean(eff))})
        print(f"{name}: {mean:.2f} µs (C++ simulator {reference_us}, paper {paper_us}; "
              f"{100 * (mean / reference_us - 1):+.1f}%)", flush=True)

    sweep = {}
    for name, reference in REFERENCE_EFFICIENCY.items():
        layer, act = layers[name]
        ours = [eie.simulate(layer, act, eie.EIEConfig(fifo_depth=d)).efficiency for d in DEPTHS]
        sweep[name] = {"depths": DEPTHS, "efficiency": ours, "reference": reference,
                       "max_abs_difference": float(max(abs(a - b) for a, b in zip(ours, reference)))}
    scal = {}
    for name in ("Alex-6", "VGG-7", "NT-We"):
        cols, n_rows, wd, ad, _, _ = eie.BENCHMARK_LAYERS[name]
        codes, codebook, act = eie.random_layer(n_rows, cols, wd, ad, seed=0)
        cycles = []
        for pes in PES:
            cfg = eie.EIEConfig(pes=pes)
            cycles.append(eie.simulate(eie.encode_layer(codes, codebook, cfg), act, cfg))
        scal[name] = {"pes": PES, "speedup": [cycles[0].cycles / c.cycles for c in cycles],
                      "efficiency": [c.efficiency for c in cycles]}

    cols, n_rows, wd, ad, _, _ = eie.BENCHMARK_LAYERS["Alex-6"]
    codes, codebook, act = eie.random_layer(n_rows, cols, wd, ad, seed=1)
    t0 = time.perf_counter()
    layer = eie.encode_layer(codes, codebook, config)
    t1 = time.perf_counter()
    eie.simulate(layer, act, config)
    t2 = time.perf_counter()
    timing = {"nonzeros": int(np.count_nonzero(codes)), "encode_s": t1 - t0, "simulate_s": t2 - t1,
              "total_s": t2 - t0}

    plots.curves({n: list(zip(s["depths"], s["efficiency"])) for n, s in sweep.items()}
                 | {f"{n} (C++ sim)": list(zip(s["depths"], s["reference"])) for n, s in sweep.items()},
                 out_dir / "eie_fifo_depth.png", "activation FIFO depth", "load-balance efficiency",
                 "EIE: efficiency vs FIFO depth (64 PEs)", xscale="log")
    plots.curves({n: list(zip(s["pes"], s["speedup"])) for n, s in scal.items()}, out_dir / "eie_pe_speedup.png",
                 "processing elements", "speedup over 1 PE", "EIE scalability", xscale="log", percent_y=False)

    table = markdown_table([[r["layer"], r["latency_us"], r["reference_us"], r["paper_us"],
                             f"{100 * (r['ratio_to_reference'] - 1):+.1f}%", r["efficiency"]] for r in rows],
                           ["layer", "ours µs", "C++ simulator µs", "paper µs", "ours vs C++", "efficiency"])
    table += "\n\n" + markdown_table(
        [[n, *(f"{a:.2f} / {b:.2f}" for a, b in zip(s["efficiency"], s["reference"]))] for n, s in sweep.items()],
        ["layer", *(f"depth {d}: ours / C++" for d in DEPTHS)])
    table += "\n\n" + markdown_table(
        [[n, *(f"{sp:.1f}× ({100 * e:.0f}%)" for sp, e in zip(s["speedup"], s["efficiency"]))] for n, s in scal.items()],
        ["layer", *(f"{p} PEs" for p in PES)])
    table += (f"\n\nAlex-6 ({timing['nonzeros']:,} non-zeros) on one core: encode {timing['encode_s']:.2f} s, "
              f"simulate {timing['simulate_s']:.2f} s")
    print(table)
    args.json.write_text(json.dumps({"layers": rows, "fifo_sweep": sweep, "scalability": scal, "timing": timing},
                                    indent=2))
    args.json.with_suffix(".md").write_text(table)


if __name__ == "__main__":
    main()
