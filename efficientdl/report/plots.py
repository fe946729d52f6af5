"""Plots of compression results (matplotlib, written to PNG files without a display)."""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> None:
    """Write ``fig`` to ``path`` whole, in the format its suffix names (PNG without one), and
    close it, also when writing fails (:func:`efficientdl.core.files.atomic_open`: a temporary
    file renamed over ``path``, the permissions of a plain ``open``; the directory is created
    if it lies in a declared output directory)."""
    from ..core.files import atomic_open

    plt = _pyplot()
    try:
        with atomic_open(path) as stream:
            fig.savefig(stream, format=os.path.splitext(os.fspath(path))[1][1:].lower() or "png", dpi=dpi)
    finally:
        plt.close(fig)


def weight_histograms(snapshots: Mapping[str, Mapping[str, np.ndarray]], path: str | os.PathLike,
                      bins: int = 120) -> None:
    """Weight distribution of each layer before pruning, after pruning, after retraining
    and after quantization (Deep Compression, Figures 4–5): one row per layer.

    Args:
        snapshots: ``{layer: {stage: nonzero weights}}``.
        path: PNG file to write.
        bins: histogram bins (the quantized panel shows the shared values as bars).
    """
    plt = _pyplot()
    order = ["original", "pruned", "retrained", "quantized"]
    titles = {"original": "before pruning", "pruned": "after pruning",
              "retrained": "after retraining", "quantized": "after quantization"}
    layers = list(snapshots)
    cols = [s for s in order if any(s in snapshots[n] for n in layers)]
    fig, axes = plt.subplots(len(layers), len(cols), figsize=(3.2 * len(cols), 2.2 * len(layers)), squeeze=False)
    for i, name in enumerate(layers):
        lim = max((float(np.abs(w).max()) for w in snapshots[name].values() if w.size), default=1.0)
        for j, stage in enumerate(cols):
            ax = axes[i, j]
            w = snapshots[name].get(stage)
            if w is not None and w.size:
                if stage == "quantized":
                    values, counts = np.unique(w, return_counts=True)
                    ax.bar(values, counts, width=2 * lim / bins, color="tab:red")
                else:
                    ax.hist(w, bins=bins, range=(-lim, lim), color="tab:blue")
            ax.set_xlim(-lim, lim)
            ax.tick_params(labelsize=7)
            if i == 0:
                ax.set_title(titles[stage], fontsize=9)
            if j == 0:
                ax.set_ylabel(f"{name}\ncount", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def curves(series: Mapping[str, Sequence[tuple[float, float]]], path: str | os.PathLike, xlabel: str,
           ylabel: str, title: str, xscale: str = "linear", percent_y: bool = True) -> None:
    """Lines of ``(x, y)`` points, one per named series (sensitivity, accuracy vs bits, ...)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in series.items():
        xs = [p[0] for p in points]
        ys = [100 * p[1] if percent_y else p[1] for p in points]
        ax.plot(xs, ys, marker="o", label=name)
    ax.set_xscale(xscale)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel + (" (%)" if percent_y else ""))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def sensitivity(curves_by_layer: Mapping[str, Sequence[tuple[float, float]]], path: str | os.PathLike) -> None:
    """Accuracy vs sparsity when one layer at a time is pruned (Han et al. NIPS'15, Figure 6)."""
    series = {k: [(100 * s, a) for s, a in v] for k, v in curves_by_layer.items()}
    curves(series, path, "sparsity (%)", "accuracy", "Pruning sensitivity, one layer at a time")


def ratio_accuracy(points: Mapping[str, Sequence[tuple[float, float]]], path: str | os.PathLike,
                   baselines: Mapping[str, float] | None = None,
                   title: str = "Deep Compression trade-off (dashed: dense; dotted: dense − 0.5)") -> None:
    """Compression ratio vs accuracy for several settings, one series per network."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (name, pts) in enumerate(points.items()):
        pts = sorted(pts)
        color = f"C{i}"
        ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", color=color, label=name)
        if baselines and name in baselines:
            ax.axhline(100 * baselines[name], color=color, ls="--", lw=0.8)
            ax.axhline(100 * baselines[name] - 0.5, color=color, ls=":", lw=0.8)
    ax.set_xlabel("compression ratio (fp32 bytes / file bytes)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def roofline(devices: Mapping[str, tuple[float, float]], points: Sequence[tuple[str, str, float, float]],
             path: str | os.PathLike, title: str = "roofline") -> None:
    """Log-log roofline plot (Williams et al. 2009; the TPU paper's Figures 5–8).

    Args:
        devices: ``{label: (peak ops/s, bandwidth bytes/s)}`` — one roof per entry.
        points: ``(label, device label, intensity ops/byte, attainable ops/s)``; points with
            the same label prefix before ``" → "`` are joined by an arrow (how compression
            moves a layer).
        path: PNG file to write.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    xs = [p[2] for p in points] or [1.0]
    lo = min(min(xs) / 4, min(peak / bw for peak, bw in devices.values()) / 4)
    hi = max(max(xs) * 4, max(peak / bw for peak, bw in devices.values()) * 4)
    grid = np.logspace(np.log10(lo), np.log10(hi), 200)
    colors = {}
    for i, (label, (peak, bw)) in enumerate(devices.items()):
        line, = ax.loglog(grid, np.minimum(peak, grid * bw) / 1e12, label=f"{label} roof")
        colors[label] = line.get_color()
    by_name: dict[str, list] = {}
    for label, dev, x, y in points:
        ax.scatter([x], [y / 1e12], color=colors.get(dev, "k"), zorder=3, s=18)
        ax.annotate(label, (x, y / 1e12), fontsize=7, xytext=(3, 3), textcoords="offset points")
        by_name.setdefault(label.split(" → ")[0] + dev, []).append((x, y))
    for pts in by_name.values():
        if len(pts) == 2:
            (x0, y0), (x1, y1) = pts
            ax.annotate("", xy=(x1, y1 / 1e12), xytext=(x0, y0 / 1e12),
                        arrowprops={"arrowstyle": "->", "color": "0.4", "lw": 0.8})
    ax.set_xlabel("operational intensity (ops per weight byte)")
    ax.set_ylabel("attainable TOPS")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def energy_bars(breakdowns: Mapping[str, Mapping[str, float]], path: str | os.PathLike,
                title: str = "energy per inference") -> None:
    """Stacked bars of energy per inference (arithmetic, on-chip memory, DRAM) in nJ.

    Args:
        breakdowns: ``{label: {"arithmetic_pj", "on_chip_pj", "dram_pj"}}``.
        path: PNG file to write.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(2.2 + 1.6 * len(breakdowns), 4.2))
    labels = list(breakdowns)
    bottom = np.zeros(len(labels))
    for key, name in (("arithmetic_pj", "arithmetic"), ("on_chip_pj", "on-chip SRAM"), ("dram_pj", "DRAM")):
        vals = np.array([breakdowns[l][key] / 1e3 for l in labels])
        ax.bar(labels, vals, bottom=bottom, label=name)
        bottom += vals
    ax.set_ylabel("nJ per inference")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def comparison_bars(labels: Sequence[str], speedup: Sequence[float], efficiency: Sequence[float],
                    path: str | os.PathLike, title: str = "") -> None:
    """Speedup and energy efficiency of platforms relative to the first, on log scales
    (the EIE paper's Figures 6–7)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, values, name in ((axes[0], speedup, "speedup"), (axes[1], efficiency, "energy efficiency")):
        bars = ax.bar(labels, values, color=["0.6"] * (len(labels) - 1) + ["tab:green"])
        ax.set_yscale("log")
        ax.set_ylabel(f"{name} (× {labels[0]})")
        ax.tick_params(axis="x", rotation=30)
        for b, v in zip(bars, values):
            ax.annotate(f"{v:.3g}×", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def pareto(rows_by_network: Mapping[str, Sequence[Mapping]], path: str | os.PathLike,
           fronts: Mapping[str, Sequence[str]] | None = None) -> None:
    """Accuracy vs file size of every method, one panel per network, Pareto front joined.

    Args:
        rows_by_network: ``{network: [{"method", "file_bytes", "accuracy"}, ...]}``.
        path: the PNG to write.
        fronts: ``{network: [method, ...]}`` the non-dominated methods, smallest first.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(rows_by_network), figsize=(6.5 * len(rows_by_network), 4.8), squeeze=False)
    for ax, (network, rows) in zip(axes[0], rows_by_network.items()):
        for i, r in enumerate(rows):
            ax.scatter(r["file_bytes"] / 1e3, 100 * r["accuracy"], color=f"C{i % 10}", s=36, zorder=3)
            ax.annotate(r["method"], (r["file_bytes"] / 1e3, 100 * r["accuracy"]), fontsize=7,
                        xytext=(4, 3), textcoords="offset points")
        front = [next(r for r in rows if r["method"] == m) for m in (fronts or {}).get(network, [])]
        if front:
            ax.step([r["file_bytes"] / 1e3 for r in front], [100 * r["accuracy"] for r in front], where="post",
                    color="k", lw=1, ls="--", label="Pareto front")
            ax.legend(fontsize=8, loc="lower right")
        ax.set_xscale("log")
        ax.set_xlabel("compressed file (kB, log scale)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(network)
        ax.grid(alpha=0.3, which="both")
    fig.suptitle("Accuracy vs size of every method")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
