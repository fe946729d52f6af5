"""The training-step model rendered: Markdown tables (:func:`render_markdown`) and plots
(matplotlib, PNG files, no display): step-time
breakdown per layer group, throughput and scaling efficiency vs devices, and the
training roofline with the layers on it.

Each function writes to a temporary file beside ``path`` and renames it
(:func:`~efficientdl.report.plots.save_figure`), so a failed plot leaves no half-written file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from .plots import _pyplot, save_figure


def _save(fig, path: str | os.PathLike) -> None:
    save_figure(fig, path, dpi=120)


def step_breakdown(groups: Mapping[str, Mapping[str, float]], path: str | os.PathLike, title: str = "") -> None:
    """Stacked bars: per layer group, milliseconds under the compute bound, the memory bound,
    and exposed communication.

    Args:
        groups: ``{group: {"compute_s", "memory_s", "communication_s" (optional)}}``.
        path: PNG file to write.
        title: the plot title.
    """
    plt = _pyplot()
    names = list(groups)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(names) + 2), 3.8))
    bottom = [0.0] * len(names)
    for key, label, color in (("compute_s", "compute-bound", "tab:blue"), ("memory_s", "memory-bound", "tab:orange"),
                              ("communication_s", "communication (exposed)", "tab:red")):
        values = [1e3 * groups[n].get(key, 0.0) for n in names]
        if any(values):
            ax.bar(names, values, bottom=bottom, label=label, color=color)
            bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_ylabel("time per step (ms)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right", fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def scaling_curves(series: Mapping[str, Sequence[tuple[int, float, float]]], path: str | os.PathLike,
                   title: str = "") -> None:
    """Throughput (left) and scaling efficiency (right) vs number of devices, one line per
    interconnect or algorithm.

    Args:
        series: ``{label: [(devices, samples_per_s, efficiency), ...]}``.
    """
    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, rows in series.items():
        n = [r[0] for r in rows]
        a.plot(n, [r[1] for r in rows], marker="o", label=label)
        b.plot(n, [r[2] for r in rows], marker="o", label=label)
    for ax in (a, b):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("devices")
        ax.grid(True, alpha=0.3)
    a.set_yscale("log")
    a.set_ylabel("samples / s")
    b.set_ylabel("scaling efficiency")
    b.set_ylim(0, 1.05)
    b.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def training_roofline(peak_flops_per_s: float, bandwidth_bytes_per_s: float,
                      points: Sequence[tuple[str, float, float, str]], path: str | os.PathLike,
                      title: str = "", attained_peak_flops_per_s: float | None = None) -> None:
    """The roofline of one device with the layers' training phases on it.

    Args:
        peak_flops_per_s: the data-sheet peak; attained_peak_flops_per_s: peak × achieved fraction.
        bandwidth_bytes_per_s: memory bandwidth.
        points: ``(label, FLOPs per byte, attained FLOP/s, kind)`` per layer.
    """
    import numpy as np

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    xs = np.logspace(-2, 4, 200)
    ax.plot(xs, np.minimum(peak_flops_per_s, xs * bandwidth_bytes_per_s), "k-", label="roofline (peak)")
    if attained_peak_flops_per_s:
        ax.plot(xs, np.minimum(attained_peak_flops_per_s, xs * bandwidth_bytes_per_s), "k--",
                label="peak × achieved fraction")
    kinds = sorted({p[3] for p in points})
    for kind in kinds:
        sel = [p for p in points if p[3] == kind and p[1] > 0]
        ax.scatter([p[1] for p in sel], [p[2] for p in sel], s=14, label=kind)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("operational intensity (FLOPs / byte)")
    ax.set_ylabel("attained FLOP/s")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.2)
    fig.tight_layout()
    _save(fig, path)


def render_markdown(result: dict, max_layers: int = 40) -> str:
    """The report of :func:`analyse_training` as Markdown tables (the :func:`report_blocks`)."""
    from .render import markdown_table

    return "\n".join(markdown_table(b[1], b[2]) if isinstance(b, tuple) else b
                     for b in report_blocks(result, max_layers))


def report_blocks(result: dict, max_layers: int = 40) -> list:
    """The report of :func:`analyse_training` as data: a list of text lines (``str``) and
    tables (``("table", rows, header)``), which :func:`render_markdown` and the HTML report
    (:func:`efficientdl.report.html.blocks_report`) render."""
    s, m, dp = result["step"], result["memory"], result["parallel"]
    gb = 1e9
    lines = [f"{result['workload']['name']} on {result['device']['name']}: batch {s['batch']} per device, "
             f"{s['precision']}, {s['optimizer']}, {s.get('memory_format', 'nchw')}; achieved fraction "
             f"{result['achieved_fraction']:.3f} ({result['fraction_source']})", ""]
    layers = s["layers"]
    shown = layers if len(layers) <= max_layers else sorted(layers, key=lambda x: -x["time_s"])[:max_layers]
    rows = [[x["name"], x["kind"], x["forward"]["flops"] / 1e9, (x["backward_data"]["flops"] +
             x["backward_weight"]["flops"]) / 1e9, x["bytes"] / 1e6, 1e3 * x["time_s"], x["bound"]] for x in shown]
    if len(layers) > max_layers:
        lines.append(f"(the {max_layers} slowest of {len(layers)} layers)\n")
    lines.append(("table", rows, ["layer", "kind", "fwd GFLOP", "bwd GFLOP", "MB moved", "ms", "bound"]))
    lines.append("")
    lines.append(("table",
        [["forward", 1e3 * s["forward_s"]], ["backward (data + weight)", 1e3 * (s["backward_s"] - s["recompute_s"])],
         ["  layout transposes in both (NCHW on tensor cores)", 1e3 * s.get("layout_s", 0.0)],
         ["recompute (checkpointing)", 1e3 * s["recompute_s"]], ["optimizer step", 1e3 * s["optimizer_s"]],
         ["step, 1 device", 1e3 * s["step_time_s"]],
         [f"step, {dp['devices']} devices ({dp['algorithm']}, {result['topology']['name']})", 1e3 * dp["step_time_s"]],
         ["  all-reduce total / exposed", f"{1e3 * dp['communication_s']:.3f} / "
                                          f"{1e3 * dp['exposed_communication_s']:.3f}"]],
        ["phase", "ms"]))
    lines.append(f"\nthroughput: {s['samples_per_s']:.1f} samples/s on 1 device; {dp['samples_per_s']:.1f} on "
                 f"{dp['devices']} (scaling efficiency {dp['scaling_efficiency']:.3f})")
    lines.append("")
    lines.append(("table",
        [["weights", m["weights_bytes"] / gb], ["gradients", m["gradients_bytes"] / gb],
         ["master weights", m["master_weights_bytes"] / gb], ["optimizer states", m["optimizer_state_bytes"] / gb],
         [f"activations (batch {m['batch']})", m["activations_bytes"] / gb], ["total", m["total_bytes"] / gb],
         [f"total with checkpointing ({m['with_checkpointing']['segments']} segments)",
          m["with_checkpointing"]["total_bytes"] / gb],
         ["usable on the device", m["usable_bytes"] / gb]], ["memory per device", "GB"]))
    lines.append(f"\nlargest batch that fits: {m['largest_batch']} ({m['largest_batch_checkpointing']} with "
                 f"activation checkpointing)")
    lines.append("")
    rows = []
    for label, curve in result["scaling"].items():
        for d in curve:
            rows.append([label, d["devices"], d["samples_per_s"], d["scaling_efficiency"], 1e3 * d["communication_s"]])
    lines.append(("table", rows, ["interconnect", "devices", "samples/s", "efficiency", "all-reduce ms"]))
    c = result["crossover"]
    if c["crossover_devices"] is None:
        lines.append(f"\nring vs parameter server ({c['servers']} server(s)): {c['at_2'] or '—'} is faster at every "
                     f"device count tried")
    else:
        lines.append(f"\nring vs parameter server ({c['servers']} server(s)): {c['at_2']} is faster at 2 devices; "
                     f"the other from {c['crossover_devices']} devices")
    lines.append("")
    cost = result["cost"]
    rows = [[d["device"], d.get("precision", s["precision"]), d.get("batch"), d["devices"], d["wall_time_s"] / 3600,
             d["device_hours"], d["energy_kwh"], d["operation_energy_j"] / 3.6e6]
            for d in cost["devices"] if "error" not in d]
    lines.append(f"time and energy for {cost['epochs']:g} epochs of {cost['dataset_samples']:,} samples:\n")
    lines.append(("table", rows, ["device", "precision", "batch", "devices", "wall hours", "device-hours",
                                  "energy kWh (TDP × time)", "kWh (45 nm ops)"]))
    return lines
