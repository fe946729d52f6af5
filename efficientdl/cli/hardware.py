"""``edl hw …``: hardware models of inference — number formats, roofline, energy, systolic array, EIE,
and a CPU/GPU/TPU/EIE comparison.  Each sub-command parses, calls :mod:`efficientdl.hardware`, renders."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import (UsageError, _emit, _fraction, _input_file, _is_container, _load_data, _load_model,
                     _nonneg_int, _output_dir, _positive_float, _positive_int, add_common_options, add_subcommands,
                     names)
from .common import _model_options, add_model_options


def _device_help(default: str) -> str:
    from ..hardware.devices import DEVICES

    return f"{', '.join(DEVICES)} or a YAML file (default {default})"


# --------------------------------------------------------------------------- edl hw formats
def add_hw_formats(p: argparse.ArgumentParser) -> None:
    """Options of ``edl hw formats``."""
    p.add_argument("--fixed", nargs="*", default=["Q7.8", "Q3.4"], help="fixed-point formats Qm.n to add")
    p.add_argument("--energy-table", help="YAML energy table (default: 45 nm, Horowitz ISSCC'14)")
    add_common_options(p, data=False)
    p.set_defaults(func=cmd_hw_formats)


def cmd_hw_formats(args: argparse.Namespace) -> int:
    """``edl hw formats``: range, precision, energy and area of the standard and given number formats."""
    from ..hardware import STANDARD_FORMATS, get_format, load_table
    from ..hardware.energy import HOROWITZ_45NM
    from ..report import markdown_table

    formats = list(STANDARD_FORMATS) + [get_format(name) for name in args.fixed]
    table = load_table(args.energy_table) if args.energy_table else HOROWITZ_45NM
    rows = []
    for f in formats:
        rows.append([f.name, f.bits, f"{f.min_value:.6g}", f"{f.max_value:.6g}", f"{f.min_positive:.3g}",
                     f"{f.epsilon:.3g}", f"{f.decimal_digits:.1f}",
                     *(("—" if v is None else v) for v in (f.energy_pj("add", table), f.energy_pj("mult", table),
                                                         f.area_um2("add", table), f.area_um2("mult", table)))])
    text = markdown_table(rows, ["format", "bits", "min", "max", "smallest > 0", "epsilon", "decimal digits",
                                 "add pJ", "mult pJ", "add µm²", "mult µm²"])
    text += f"\n\nenergy and area: {table.source}"
    _emit(args, {"formats": [f.summary() for f in formats], "energy_table": table.name}, text)
    return 0


# --------------------------------------------------------------------------- edl hw roofline
def add_hw_roofline(p: argparse.ArgumentParser) -> None:
    """Options of ``edl hw roofline``."""
    from ..hardware.devices import PRECISIONS

    p.add_argument("model", nargs="?", help="checkpoint (.pt) or compressed file (.edlz); without it, the TPU "
                                            "paper's six applications on TPU v1, K80 and Haswell")
    p.add_argument("--device", default="tpu-v1", help=_device_help("tpu-v1"))
    p.add_argument("--batch", type=_positive_int, default=1, help="samples per weight fetch (default 1)")
    p.add_argument("--precision", choices=names(PRECISIONS), default="int8")
    p.add_argument("-o", "--output", default="runs/roofline", help="output directory for roofline.png")
    add_model_options(p)
    add_common_options(p)
    p.set_defaults(func=cmd_hw_roofline)


def cmd_hw_roofline(args: argparse.Namespace) -> int:
    """``edl hw roofline``: each layer (or the TPU paper's applications) under a device's roofline."""
    from ..hardware import devices as devs
    from ..hardware import roofline as rl
    from ..report import html, markdown_table, plots

    device = devs.get_device(args.device)
    out_dir = _output_dir(args.output)
    points, rows, result = [], [], {"device": device.name, "batch": args.batch, "precision": args.precision}
    roofs = {}
    if args.model is None:  # the TPU paper's figure: its six applications on TPU, K80 and Haswell
        result["applications"] = []
        for name in ("tpu-v1", "k80", "haswell"):
            d = devs.DEVICES[name]
            precision = "int8" if "int8" in d.peak_ops else "fp32"
            roofs[name] = (d.peak(precision), d.bandwidth_bytes_per_s)
            for app, intensity in rl.TPU_APPLICATIONS.items():
                pt = rl.application_point(app, intensity, d, precision)
                points.append((app, name, pt.intensity_weight, pt.attainable_ops))
                rows.append([name, app, intensity, pt.attainable_ops / 1e12, pt.bound])
                result["applications"].append({"device": name, "name": app, "intensity": intensity,
                                               "attainable_tops": pt.attainable_ops / 1e12, "bound": pt.bound})
        header = ["device", "application", "ops / weight byte", "attainable TOPS", "bound"]
        title = "TPU paper applications (Jouppi et al. ISCA'17)"
    else:
        roofs[device.name] = (device.peak(args.precision), device.bandwidth_bytes_per_s)
        src, workloads = _workloads(args)
        result["layers"] = []
        for label, layers in workloads.items():
            for layer in layers:
                pt = rl.layer_point(layer, device, args.batch, args.precision, useful_only=label == "compressed")
                name = layer.name if len(workloads) == 1 else f"{layer.name} → {label}"
                points.append((name, device.name, pt.intensity_weight, pt.attainable_ops))
                rows.append([label, layer.name, layer.weight_bytes, pt.ops, pt.intensity_weight,
                             pt.intensity_total, pt.attainable_ops / 1e12, pt.bound, pt.time_s * 1e6])
                result["layers"].append({"storage": label, **layer.to_dict(), "ops": pt.ops,
                                         "intensity_weight": pt.intensity_weight,
                                         "intensity_total": pt.intensity_total,
                                         "attainable_tops": pt.attainable_ops / 1e12, "bound": pt.bound,
                                         "time_us": pt.time_s * 1e6})
        header = ["storage", "layer", "weight bytes", "ops", "ops / weight byte", "ops / byte (all)",
                  "attainable TOPS", "bound", "time µs"]
        title = f"{src.name} on {device.name}, batch {args.batch}, {args.precision}"
    plots.roofline(roofs, points, out_dir / "roofline.png", title)
    html.write(out_dir / "report.html", html.command_report(
        f"Roofline: {title}", [(None, rows, header)], [(out_dir / "roofline.png", title)]))
    text = markdown_table(rows, header) + f"\n\nplot: {out_dir / 'roofline.png'}"
    _emit(args, result, text)
    return 0


def _workloads(args: argparse.Namespace) -> tuple[Path, dict]:
    """Dense (and, for a compressed file, compressed) workloads of the model in ``args.model``."""
    from ..compress.workload import file_workload, model_workload

    src = _input_file(args.model)
    model = _load_model(src, args)      # a bad file is reported before any data is read
    ds = _load_data(args)
    x = next(iter(ds.test))[0][:1]
    if _is_container(src):
        return src, {"dense": model_workload(model, x), "compressed": file_workload(src, x, **_model_options(args))}
    return src, {"dense": model_workload(model, x)}


# --------------------------------------------------------------------------- edl hw energy
def add_hw_energy(p: argparse.ArgumentParser) -> None:
    """Options of ``edl hw energy``."""
    p.add_argument("model", help="checkpoint (.pt) or compressed file (.edlz; compared with its dense form)")
    p.add_argument("--batch", type=_positive_int, default=1, help="samples per weight fetch (default 1)")
    p.add_argument("--on-chip-kib", type=_nonneg_int, default=1024, help="on-chip memory for weights (default 1024)")
    p.add_argument("--arithmetic", choices=["fp32", "fp16", "int32", "int8"], default="fp32")
    p.add_argument("--energy-table", help="YAML energy table (default: 45 nm, Horowitz ISSCC'14)")
    p.add_argument("-o", "--output", default="runs/energy", help="output directory for energy.png")
    add_model_options(p)
    add_common_options(p)
    p.set_defaults(func=cmd_hw_energy)


def cmd_hw_energy(args: argparse.Namespace) -> int:
    """``edl hw energy``: energy per inference of the dense (and compressed) model."""
    from ..hardware.energy import HOROWITZ_45NM, inference_energy, load_table
    from ..report import html, markdown_table, plots

    table = load_table(args.energy_table) if args.energy_table else HOROWITZ_45NM
    src, workloads = _workloads(args)
    out_dir = _output_dir(args.output)
    result = {"file": str(src), "batch": args.batch, "on_chip_bytes": args.on_chip_kib * 1024,
              "arithmetic": args.arithmetic, "energy_table": table.name, "storage": {}}
    for label, layers in workloads.items():
        e = inference_energy(layers, args.batch, args.on_chip_kib * 1024, args.arithmetic, table,
                             skip_zeros=label == "compressed")
        result["storage"][label] = e.to_dict() | {"weight_bytes": sum(l.weight_bytes for l in layers)}
    rows = [[label, d["weight_bytes"], "yes" if d["weights_on_chip"] else "no", d["arithmetic_pj"] / 1e3,
             d["on_chip_pj"] / 1e3, d["dram_pj"] / 1e3, d["total_pj"] / 1e3] for label, d in result["storage"].items()]
    header = ["storage", "weight bytes", "weights on chip", "arithmetic nJ", "on-chip nJ", "DRAM nJ", "total nJ"]
    text = markdown_table(rows, header)
    notes = []
    if "compressed" in result["storage"]:
        result["ratio"] = result["storage"]["dense"]["total_pj"] / result["storage"]["compressed"]["total_pj"]
        notes.append(f"dense / compressed energy: {result['ratio']:.1f}×")
        text += f"\n\n{notes[-1]}"
    title = f"{src.name}: batch {args.batch}, {args.arithmetic}, {args.on_chip_kib} KiB on chip"
    plots.energy_bars(result["storage"], out_dir / "energy.png", title)
    notes.append(f"model: {table.source}; weights read once per batch, from SRAM if all fit on chip, else DRAM")
    html.write(out_dir / "report.html", html.command_report(
        f"Energy per inference of {title}", [(None, rows, header)], [(out_dir / "energy.png", title)], notes))
    text += f"\n{notes[-1]}"
    text += f"\nplot: {out_dir / 'energy.png'}"
    _emit(args, result, text)
    return 0


# --------------------------------------------------------------------------- edl hw systolic
def add_hw_systolic(p: argparse.ArgumentParser) -> None:
    """Options of ``edl hw systolic``."""
    p.add_argument("model", help="checkpoint (.pt) or compressed file (.edlz)")
    p.add_argument("--batch", type=_positive_int, default=1, help="samples per weight fetch (default 1)")
    p.add_argument("--rows", type=_positive_int, default=256)
    p.add_argument("--cols", type=_positive_int, default=256)
    p.add_argument("--clock-mhz", type=_positive_float, default=700.0)
    p.add_argument("--device", default="tpu-v1",
                   help="device whose DRAM bandwidth feeds the array: " + _device_help("tpu-v1"))
    p.add_argument("--bandwidth-gbs", type=_positive_float, help="DRAM bandwidth, overriding --device")
    add_model_options(p)
    add_common_options(p)
    p.set_defaults(func=cmd_hw_systolic)


def cmd_hw_systolic(args: argparse.Namespace) -> int:
    """``edl hw systolic``: cycles, stalls and utilisation of the model on a systolic array."""
    from ..hardware.systolic import SystolicConfig, simulate_layers
    from ..report import markdown_table

    from ..hardware.devices import get_device

    bandwidth = args.bandwidth_gbs * 1e9 if args.bandwidth_gbs else get_device(args.device).bandwidth_bytes_per_s
    config = SystolicConfig(rows=args.rows, cols=args.cols, clock_hz=args.clock_mhz * 1e6,
                            bandwidth_bytes_per_s=bandwidth)
    src, workloads = _workloads(args)
    layers = simulate_layers(workloads["dense"], args.batch, config)
    total_cycles = sum(r["total_cycles"] for r in layers)
    macs = sum(r["m"] * r["k"] * r["n"] for r in layers)
    result = {"file": str(src), "batch": args.batch, "config": config.__dict__, "layers": layers,
              "total_cycles": total_cycles, "latency_us": total_cycles / config.clock_hz * 1e6,
              "utilisation": macs / (total_cycles * config.rows * config.cols) if total_cycles else 0.0}
    rows = [[r["name"], f"{r['m']}×{r['k']}×{r['n']}", r["tiles"], r["compute_cycles"], r["stall_cycles"],
             r["total_cycles"], 100 * r["utilisation"], r["bound"]] for r in layers]
    text = markdown_table(rows, ["layer", "M×K×N", "tiles", "compute cycles", "stall cycles", "total cycles",
                                 "utilisation %", "bound"])
    text += (f"\n\n{config.rows}×{config.cols} array at {args.clock_mhz:g} MHz, {bandwidth / 1e9:g} GB/s: "
             f"{result['latency_us']:.1f} µs per batch of {args.batch}, utilisation {100 * result['utilisation']:.2f}%")
    _emit(args, result, text)
    return 0


# --------------------------------------------------------------------------- edl hw eie
def add_hw_eie(p: argparse.ArgumentParser) -> None:
    """Options of ``edl hw eie``."""
    p.add_argument("source", help="compressed file (.edlz), an EIE benchmark layer (Alex-6, …, NT-LSTM), all, "
                                  "or random (with --shape and the densities)")
    p.add_argument("--shape", type=_positive_int, nargs=2, metavar=("IN", "OUT"), help="random layer size")
    p.add_argument("--weight-density", type=_fraction, default=0.1, help="random layer weight density (0.1)")
    p.add_argument("--activation-density", type=_fraction, default=0.35, help="random input density (0.35)")
    p.add_argument("--pes", type=_positive_int, default=64, help="processing elements (default 64)")
    p.add_argument("--fifo-depth", type=_positive_int, default=8, help="activation FIFO depth ≥ 2 (default 8)")
    p.add_argument("--sram-line-bits", type=_positive_int, default=64)
    p.add_argument("--clock-mhz", type=_positive_float, default=800.0)
    p.add_argument("--sweep", action="store_true", help="also sweep FIFO depth 2–256 and PEs 1–256 (plots)")
    p.add_argument("-o", "--output", default="runs/eie", help="output directory for the sweep plots")
    add_model_options(p)
    add_common_options(p)
    p.set_defaults(func=cmd_hw_eie)


def _eie_layers(args: argparse.Namespace) -> tuple[list[dict], list[str]]:
    """The layers ``edl hw eie`` simulates: benchmark layers by name, or a compressed file's fc layers."""
    from ..hardware import eie

    if args.source == "random":
        if not args.shape:
            raise UsageError("random needs --shape IN OUT")
        cols, rows = args.shape
        codes, codebook, act = eie.random_layer(rows, cols, args.weight_density, args.activation_density,
                                                seed=args.seed)
        return [{"name": f"random {cols}×{rows}", "codes": codes, "codebook": codebook, "bias": None,
                 "activations": act}], []
    names = list(eie.BENCHMARK_LAYERS) if args.source == "all" else [args.source]
    if all(n in eie.BENCHMARK_LAYERS for n in names):
        out = []
        for i, name in enumerate(names):
            cols, rows, wd, ad, paper_us, reference_us = eie.BENCHMARK_LAYERS[name]
            codes, codebook, act = eie.random_layer(rows, cols, wd, ad, seed=args.seed + i)
            out.append({"name": name, "codes": codes, "codebook": codebook, "bias": None, "activations": act,
                        "paper_us": paper_us, "reference_us": reference_us})
        return out, []
    src = Path(args.source)
    if not src.exists():
        raise UsageError(f"{src}: no such file, and not a benchmark layer "
                         f"(one of {', '.join(eie.BENCHMARK_LAYERS)}, or all)")
    from ..compress.workload import shared_fc_layers

    from .. import format as fmt

    src = _input_file(args.source)
    fmt.read(src)                       # a bad file is reported before any data is read
    _load_model(src, args)              # and a model it cannot build (your code: --model, --trust-model-code)
    ds = _load_data(args)
    return shared_fc_layers(src, next(iter(ds.test))[0], **_model_options(args))


def cmd_hw_eie(args: argparse.Namespace) -> int:
    """``edl hw eie``: simulate each layer (:func:`efficientdl.hardware.eie.simulate_layer`) and render."""
    from ..hardware import eie
    from ..report import html, markdown_table, plots

    options = {"pes": args.pes, "fifo_depth": args.fifo_depth, "sram_line_bits": args.sram_line_bits,
               "clock_hz": args.clock_mhz * 1e6}
    eie.EIEConfig(**options)                      # a bad option fails before any work
    layers, skipped = _eie_layers(args)
    out_dir = _output_dir(args.output)
    results, rows = [], []
    fifo_series, pe_speedup, pe_eff = {}, {}, {}
    for layer in layers:
        r = eie.simulate_layer(layer["codes"], layer["codebook"], layer["activations"], layer["bias"],
                               sweep=args.sweep, **options)
        d = {"name": layer["name"], **{k: v for k, v in r.items() if k != "sweep"},
             "paper_us": layer.get("paper_us"), "reference_us": layer.get("reference_us")}
        results.append(d)
        ref = f"{d['reference_us']:.1f} / {d['paper_us']:.1f}" if d["reference_us"] else "–"
        rows.append([d["name"], f"{d['cols']}×{d['rows']}", 100 * d["weight_density"], 100 * d["activation_density"],
                     d["cycles"], d["latency_us"], ref, d["efficiency"], d["utilisation"],
                     d["energy_total_pj"] / 1e3, f"{d['max_rel_error']:.1e}"])
        if args.sweep:
            d["sweep"] = r["sweep"]
            fifo_series[d["name"]] = r["sweep"]["fifo_efficiency"]
            pe_speedup[d["name"]], pe_eff[d["name"]] = r["sweep"]["pe_speedup"], r["sweep"]["pe_efficiency"]
    header = ["layer", "in×out", "weight %", "act %", "cycles", "µs", "C++ sim / paper µs", "efficiency",
              "utilisation", "energy nJ", "max rel error"]
    text = markdown_table(rows, header)
    text += (f"\n\n{args.pes} PEs, FIFO depth {args.fifo_depth}, {args.clock_mhz:g} MHz; "
             "efficiency = effective non-zeros / PEs / cycles; error vs dense float64 math")
    if skipped:
        text += f"\nnot simulated (EIE runs weight-shared fc layers): {', '.join(skipped)}"
    if args.sweep and results:
        plots.curves(fifo_series, out_dir / "eie_fifo_depth.png", "activation FIFO depth", "load-balance efficiency",
                     "EIE: efficiency vs FIFO depth", xscale="log", percent_y=True)
        plots.curves(pe_speedup, out_dir / "eie_pe_speedup.png", "processing elements", "speedup over 1 PE",
                     "EIE scalability", xscale="log", percent_y=False)
        plots.curves(pe_eff, out_dir / "eie_pe_efficiency.png", "processing elements", "load-balance efficiency",
                     "EIE scalability: efficiency", xscale="log", percent_y=True)
        text += f"\nplots: {out_dir}/eie_fifo_depth.png, eie_pe_speedup.png, eie_pe_efficiency.png"
        html.write(out_dir / "report.html", html.command_report(
            f"EIE: {args.pes} PEs, FIFO depth {args.fifo_depth}, {args.clock_mhz:g} MHz", [(None, rows, header)],
            [(out_dir / "eie_fifo_depth.png", "efficiency vs FIFO depth"),
             (out_dir / "eie_pe_speedup.png", "speedup vs processing elements"),
             (out_dir / "eie_pe_efficiency.png", "efficiency vs processing elements")]))
    _emit(args, {"config": {"pes": args.pes, "fifo_depth": args.fifo_depth, "clock_mhz": args.clock_mhz,
                            "sram_line_bits": args.sram_line_bits}, "layers": results, "skipped": skipped}, text)
    return 0


# --------------------------------------------------------------------------- edl hw compare
def add_hw_compare(p: argparse.ArgumentParser) -> None:
    """Options of ``edl hw compare``."""
    p.add_argument("model", help="compressed file (.edlz)")
    p.add_argument("--batch", type=_positive_int, default=1, help="inputs per weight fetch (default 1)")
    p.add_argument("--cpu", default="haswell", help="CPU device (default haswell)")
    p.add_argument("--gpu", default="k80", help="GPU device (default k80; p100, v100, h100, h200 or YAML)")
    p.add_argument("--pes", type=_positive_int, default=64, help="EIE processing elements (default 64)")
    p.add_argument("-o", "--output", default="runs/compare", help="output directory for compare.png")
    add_model_options(p)
    add_common_options(p)
    p.set_defaults(func=cmd_hw_compare)


def cmd_hw_compare(args: argparse.Namespace) -> int:
    """``edl hw compare``: the compressed file's fc layers on CPU, GPU, TPU and EIE side by side."""
    from ..hardware import devices as devs
    from ..hardware import eie
    from ..hardware.compare import compare
    from ..report import html, markdown_table, plots

    src = _input_file(args.model)
    if not _is_container(src):
        raise UsageError(f"{src}: hw compare needs a compressed file (EIE runs the compressed layers)")
    args.source = str(src)
    fc_layers, _ = _eie_layers(args)
    if not fc_layers:
        raise UsageError(f"{src}: no weight-shared fully connected layer to compare on")
    latency_s = energy_j = 0.0
    for layer in fc_layers:
        cfg = eie.config_for_codebook(len(layer["codebook"]), pes=args.pes)
        r = eie.simulate(eie.encode_layer(layer["codes"], layer["codebook"], cfg, layer["bias"]),
                         layer["activations"], cfg)
        latency_s += r.latency_us * 1e-6
        energy_j += sum(r.energy_pj.values()) * 1e-12
    _, workloads = _workloads(args)
    names = {layer["name"] for layer in fc_layers}
    dense = [w for w in workloads["dense"] if w.name in names]
    compressed = [w for w in workloads["compressed"] if w.name in names]
    rows = compare(dense, compressed, latency_s, energy_j, devs.get_device(args.cpu), devs.get_device(args.gpu),
                   devs.get_device("tpu-v1"), args.batch, eie_label=f"cycle-level model, {args.pes} PEs")
    out_dir = _output_dir(args.output)
    title = f"{src.name}: layers {', '.join(sorted(names))}, batch {args.batch}"
    plots.comparison_bars([r["platform"] for r in rows], [r["speedup"] for r in rows],
                          [r["energy_efficiency"] for r in rows], out_dir / "compare.png", title)
    table = ([[r["platform"], r["method"], r["latency_us"], r["throughput_per_s"], r["energy_uj"], r["speedup"],
               r["energy_efficiency"]] for r in rows],
             ["platform", "how", "latency µs (batch)", "inferences / s", "energy µJ / inference", "speedup",
              "energy efficiency"])
    html.write(out_dir / "report.html", html.command_report(
        f"CPU, GPU, TPU and EIE: {title}", [(None, *table)], [(out_dir / "compare.png", title)],
        ["speedup and efficiency relative to CPU dense; CPU/GPU: roofline × TDP estimates"]))
    text = markdown_table(*table)
    text += (f"\n\nlayers: {', '.join(sorted(names))} (EIE runs fully connected layers); "
             "speedup and efficiency relative to CPU dense; CPU/GPU: roofline × TDP estimates"
             f"\nplot: {out_dir / 'compare.png'}")
    _emit(args, {"file": str(src), "batch": args.batch, "layers": sorted(names), "platforms": rows}, text)
    return 0


# --------------------------------------------------------------------------- edl hw train
def add_hw_train(p: argparse.ArgumentParser) -> None:
    """Options of ``edl hw train``, declared with its handler in :mod:`efficientdl.cli.hw_train`."""
    from . import hw_train

    hw_train.add_arguments(p)
    p.set_defaults(func=hw_train.run)


# --------------------------------------------------------------------------- the group
#: ``edl hw`` sub-commands: name → (help, function adding its options and handler)
HW_COMMANDS = {
    "formats": ("range, precision, energy and area of number formats", add_hw_formats),
    "roofline": ("operational intensity, attainable performance and bound per layer", add_hw_roofline),
    "energy": ("energy per inference: arithmetic, on-chip memory, DRAM (45 nm table)", add_hw_energy),
    "systolic": ("a TPU-style weight-stationary systolic array: cycles, stalls, utilisation", add_hw_systolic),
    "eie": ("cycle-level EIE simulation of a compressed file's fc layers or a benchmark layer", add_hw_eie),
    "compare": ("CPU, GPU, TPU and EIE side by side: latency, throughput, energy", add_hw_compare),
    "train": ("training-step model: time, memory and data-parallel scaling of a model on GPUs, TPUs and CPUs",
              add_hw_train),
}


def add_hw(p: argparse.ArgumentParser, only: str | None = None) -> None:
    """The ``edl hw`` group; ``only`` builds just that sub-command's options (see :func:`add_subcommands`)."""
    add_subcommands(p, "hw_command", "HW_COMMAND", HW_COMMANDS, only)
