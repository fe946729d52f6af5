"""Rendering of results: Markdown tables (the paper's layouts) and console output."""

from __future__ import annotations

import json
import math
from typing import Any, Iterable, Sequence


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isinf(value) or math.isnan(value):
            return "–"
        return f"{value:,.2f}" if abs(value) >= 100 else f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def format_cell(value: Any) -> str:
    """A table cell as the Markdown tables write it (``–`` for none, thousands separators,
    three significant digits below 1)."""
    return _fmt(value)


def markdown_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """A GitHub-flavoured Markdown table; numbers right-aligned."""
    cells = [[_fmt(v) for v in row] for row in rows]
    numeric = [all(isinstance(row[i], (int, float)) or row[i] is None for row in rows) if rows else False
               for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def _pct(x: float | None) -> float | None:
    return None if x is None else 100.0 * x


def stage_rows(stages: Iterable[dict]) -> tuple[list[list[Any]], list[str]]:
    """The rows and header of the stage table (:func:`stage_table`), as numbers: the data
    that the Markdown and the HTML report both render.

    Args:
        stages: stage dicts of ``report.json`` (``StageReport.to_dict``).

    Returns:
        ``(rows, header)``: per stage its name, accuracy in percent, drop from the first
        stage in points, file bytes, ratio and seconds (``None`` where not measured).
    """
    stages = list(stages)
    base = stages[0].get("accuracy_after") if stages else None
    rows = []
    for s in stages:
        acc = s.get("accuracy_after")
        drop = None if acc is None or base is None else 100.0 * (base - acc)
        rows.append([s["stage"], _pct(acc), drop, s["size_bytes"], s["ratio"], s.get("seconds")])
    return rows, ["stage", "accuracy %", "drop (points)", "file bytes", "ratio ×", "seconds"]


def stage_table(stages: Iterable[dict]) -> str:
    """Where the ratio comes from, stage by stage (the paper's Figure 1 as a table).

    Args:
        stages: stage dicts of ``report.json`` (``StageReport.to_dict``).
    """
    return markdown_table(*stage_rows(stages))


#: the label of the total row of :func:`layer_rows`
TOTAL_ROW = "total (tensors only)"


def layer_rows(stages: Iterable[dict]) -> tuple[list[list[Any]], list[str]]:
    """The rows and header of the per-layer table (:func:`layer_table`), as numbers, the
    last row the total (labelled :data:`TOTAL_ROW`): the data that the Markdown and the
    HTML report both render.

    Args:
        stages: stage dicts of ``report.json`` (``StageReport.to_dict``).

    Returns:
        ``(rows, header)``.
    """
    by_stage = {s["stage"]: s for s in stages}
    errors = {stage: (by_stage.get(stage) or {}).get("settings", {}).get("output_error") or {}
              for stage in ("prune", "quantize")}
    with_errors = any(errors.values())
    final = by_stage.get("huffman") or by_stage.get("encode") or list(by_stage.values())[-1]
    fixed = {layer["name"]: layer for layer in (by_stage.get("quantize") or by_stage.get("prune") or final)["layers"]}
    rows = []
    tot = {"weights": 0, "nonzero": 0, "fixed": 0, "final": 0}
    for layer in final["layers"]:
        f = fixed.get(layer["name"], layer)
        rows.append([
            layer["name"], layer["weights"], 100.0 * layer["density"], f["weight_bits"],
            layer.get("weight_bits_huffman"), f["index_bits"], layer.get("index_bits_huffman"),
            f["ratio"], layer["ratio"],
        ] + ([_pct(errors["prune"].get(layer["name"])), _pct(errors["quantize"].get(layer["name"]))]
             if with_errors else []))
        tot["weights"] += layer["weights"]
        tot["nonzero"] += layer["nonzero"]
        tot["fixed"] += f["size_bytes"]
        tot["final"] += layer["size_bytes"]
    rows.append([TOTAL_ROW, tot["weights"], 100.0 * tot["nonzero"] / max(tot["weights"], 1),
                 None, None, None, None, 4 * tot["weights"] / max(tot["fixed"], 1),
                 4 * tot["weights"] / max(tot["final"], 1)] + ([None, None] if with_errors else []))
    return rows, (["layer", "weights", "density % (P)", "weight bits (P+Q)", "weight bits (P+Q+H)",
                   "index bits (P+Q)", "index bits (P+Q+H)", "ratio (P+Q)", "ratio (P+Q+H)"]
                  + (["output error % (P)", "output error % (P+Q)"] if with_errors else []))


def layer_table(stages: Iterable[dict]) -> str:
    """Per-layer table in the layout of the Deep Compression paper's Tables 1–4.

    Columns: weights, density after pruning (P), weight bits at fixed width (P+Q) and
    after Huffman coding (P+Q+H), index bits likewise, and the per-layer ratio of the
    fixed-width (P+Q) and Huffman (P+Q+H) encodings, with a total row.  When the run was
    calibrated, two more columns give each layer's relative output error against the
    dense layer on the calibration inputs, ``‖(W − Ŵ)X‖_F / ‖W X‖_F`` in percent, after
    pruning (P) and after weight sharing (P+Q) (the stages' ``settings["output_error"]``).
    """
    rows, header = layer_rows(stages)
    rows[-1][0] = "**total** (tensors only)"
    return markdown_table(rows, header)


def markdown_report(report: dict, title: str = "Deep Compression report") -> str:
    """The whole ``report.md`` from a ``report.json`` dict."""
    acc0, acc1 = report.get("accuracy_original"), report.get("accuracy_compressed")
    lines = [f"# {title}", ""]
    lines.append(f"- original: {report['original_bytes']:,} bytes (fp32 parameters)")
    lines.append(f"- compressed file: {report['compressed_bytes']:,} bytes — **{report['ratio']:.1f}×** smaller")
    if acc0 is not None and acc1 is not None:
        lines.append(f"- accuracy: {100 * acc0:.2f}% → {100 * acc1:.2f}% "
                     f"({100 * (acc1 - acc0):+.2f} points; compressed accuracy measured on the model decoded from the file)")
    lines.append(f"- decoded weights equal the quantized weights bit for bit: {report.get('bit_exact')}")
    lines += ["", "## Stages", "", stage_table(report["stages"]), "",
              "## Layers", "", layer_table(report["stages"]), ""]
    return "\n".join(lines)


def dumps(data: Any) -> str:
    """JSON text of a result (numpy scalars and tuples converted)."""
    def default(o: Any) -> Any:
        if hasattr(o, "tolist"):
            return o.tolist()
        if hasattr(o, "to_dict"):
            return o.to_dict()
        raise TypeError(f"cannot serialise {type(o).__name__}")
    return json.dumps(data, indent=2, default=default)
