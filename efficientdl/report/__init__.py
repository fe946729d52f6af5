"""Results as data (dataclasses → JSON) and their rendering (Markdown tables, a self-contained HTML page, plots)."""

from .render import dumps, layer_table, markdown_report, markdown_table, stage_table
from .results import LayerRecord, StageReport

__all__ = ["LayerRecord", "StageReport", "dumps", "layer_table", "markdown_report", "markdown_table",
           "stage_table"]
