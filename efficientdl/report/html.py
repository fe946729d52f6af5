"""Results rendered as one self-contained HTML page (``report.html``).

The page is made from the same data as the Markdown report — the rows of
:func:`~efficientdl.report.render.stage_rows` and :func:`~efficientdl.report.render.layer_rows`,
or the rows a command renders with :func:`~efficientdl.report.render.markdown_table` —
and from the plot files the command wrote.  Everything is inside the one file: the CSS
inline, PNG plots as ``data:`` URIs, SVG plots inline; no script, no font or image from
elsewhere, and a Content-Security-Policy that forbids the browser to fetch anything.
Every string taken from the data is escaped with :func:`html.escape`.

A number cell shows the value formatted as in the Markdown tables and keeps the exact
value in a ``data-value`` attribute (``repr`` of the float or integer), so a reader or a
test can compare the page with ``report.json``.

Example::

    from efficientdl.report import html
    page = html.command_report("Pruning sensitivity", [("accuracy", rows, header)],
                               plots=[("runs/sensitivity/sensitivity.png", "accuracy vs sparsity")])
    html.write("runs/sensitivity/report.html", page)
"""

from __future__ import annotations

import base64
import html as _html
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .render import TOTAL_ROW, _fmt, layer_rows, stage_rows

#: the page's only style sheet: system fonts, nothing fetched
CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; margin: 2em auto;
       max-width: 1150px; padding: 0 1em; color: #1d1d1f; background: #fff; line-height: 1.4; }
h1 { font-size: 1.6em; border-bottom: 2px solid #2b6cb0; padding-bottom: .2em; }
h2 { font-size: 1.25em; margin-top: 1.6em; color: #2b6cb0; }
ul.summary { padding-left: 1.2em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: .9em; }
caption { caption-side: top; text-align: left; font-weight: 600; padding-bottom: .3em; }
th, td { border: 1px solid #cbd5e0; padding: .25em .6em; }
th { background: #edf2f7; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.total td { font-weight: 700; background: #f7fafc; }
tbody tr:nth-child(even) td { background: #fafbfc; }
figure { margin: 1em 0 1.6em; }
figure img, figure svg { max-width: 100%; height: auto; border: 1px solid #e2e8f0; }
figcaption { font-size: .9em; color: #4a5568; }
p.note { color: #4a5568; font-size: .9em; }
"""

#: the browser may load nothing: images only from ``data:`` URIs, styles only inline
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def esc(value: Any) -> str:
    """``str(value)`` escaped for HTML text and attribute values (quotes included)."""
    return _html.escape(str(value), quote=True)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _cell(value: Any, numeric: bool) -> str:
    if _is_number(value):
        exact = repr(float(value)) if isinstance(value, float) else str(int(value))
        return f'<td class="num" data-value="{esc(exact)}">{esc(_fmt(value))}</td>'
    return f'<td class="num">{esc(_fmt(value))}</td>' if numeric else f"<td>{esc(_fmt(value))}</td>"


def table(rows: Sequence[Sequence[Any]], header: Sequence[str], caption: str | None = None,
          total_last: bool = False, table_id: str | None = None) -> str:
    """An HTML table of ``rows`` (the rows a Markdown table is made of).

    Numbers are formatted as in the Markdown tables (``render._fmt``), right-aligned, and
    keep their exact value in ``data-value``; ``None`` shows as ``–``.

    Args:
        rows: one sequence of cells per row.
        header: the column names.
        caption: a caption above the table.
        total_last: the last row is a total (shown bold).
        table_id: the table's ``id`` attribute.

    Returns:
        The ``<table>`` element as text.
    """
    numeric = [bool(rows) and all(_is_number(r[i]) or r[i] is None for r in rows) for i in range(len(header))]
    out = [f'<table id="{esc(table_id)}">' if table_id else "<table>"]
    if caption:
        out.append(f"<caption>{esc(caption)}</caption>")
    out.append("<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead><tbody>")
    for i, row in enumerate(rows):
        klass = ' class="total"' if total_last and i == len(rows) - 1 else ""
        out.append(f"<tr{klass}>" + "".join(_cell(v, n) for v, n in zip(row, numeric)) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


_SVG_DROP = (re.compile(r"<\?xml[^>]*\?>"), re.compile(r"<!DOCTYPE[^>]*>", re.S),
             re.compile(r"<metadata>.*?</metadata>", re.S), re.compile(r'\s+xmlns(:\w+)?="[^"]*"'),
             re.compile(r"<script\b.*?</script>", re.S | re.I))


def inline_svg(svg: str) -> str:
    """An SVG document made fit to sit inside the page: the XML prolog, doctype, metadata,
    namespace declarations (HTML does not need them) and any script removed."""
    for pattern in _SVG_DROP:
        svg = pattern.sub("", svg)
    return svg.strip()


def figure(source: str | os.PathLike | bytes | Any, caption: str | None = None, alt: str | None = None) -> str:
    """A plot embedded in the page.

    Args:
        source: a ``.png`` file (embedded as a base64 ``data:`` URI), an ``.svg`` file
            (inlined by :func:`inline_svg`), PNG bytes, or a matplotlib figure (drawn to
            SVG and inlined).
        caption: the caption under the plot (default: the file name).
        alt: the image's alternative text (default: the caption).

    Returns:
        The ``<figure>`` element as text.
    """
    name = None
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        name = path.name
        if path.suffix.lower() == ".svg":
            body = inline_svg(path.read_text(encoding="utf-8"))
        else:
            body = _img(path.read_bytes(), alt or caption or name)
    elif isinstance(source, (bytes, bytearray)):
        body = _img(bytes(source), alt or caption or "plot")
    elif hasattr(source, "savefig"):
        import io

        buffer = io.StringIO()
        source.savefig(buffer, format="svg")
        body = inline_svg(buffer.getvalue())
    else:
        raise TypeError(f"figure: expected a PNG or SVG path, PNG bytes or a matplotlib figure, "
                        f"got {type(source).__name__}")
    caption = caption if caption is not None else name
    tail = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f"<figure>{body}{tail}</figure>"


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def page(title: str, blocks: Iterable[str]) -> str:
    """The whole HTML document: ``title`` as heading, then ``blocks`` (already HTML) in order."""
    head = (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{esc(CSP)}">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<h1>{esc(title)}</h1>\n")
    return head + "\n".join(blocks) + "\n</body>\n</html>\n"


def heading(text: str) -> str:
    """A section heading."""
    return f"<h2>{esc(text)}</h2>"


def note(text: str) -> str:
    """A paragraph of explanatory text."""
    return f'<p class="note">{esc(text)}</p>'


def _summary(report: Mapping[str, Any]) -> str:
    items = []
    if report.get("original_bytes") is not None:
        items.append(f"original: {report['original_bytes']:,} bytes (fp32 parameters)")
    if report.get("compressed_bytes") is not None:
        ratio = report.get("ratio")
        items.append(f"compressed file: {report['compressed_bytes']:,} bytes"
                     + (f" — {ratio:.1f}× smaller" if _is_number(ratio) and math.isfinite(ratio) else ""))
    acc0, acc1 = report.get("accuracy_original"), report.get("accuracy_compressed")
    if acc0 is not None and acc1 is not None:
        items.append(f"accuracy: {100 * acc0:.2f}% → {100 * acc1:.2f}% ({100 * (acc1 - acc0):+.2f} points; "
                     "compressed accuracy measured on the model decoded from the file)")
    if "bit_exact" in report:
        items.append(f"decoded weights equal the quantized weights bit for bit: {report['bit_exact']}")
    if report.get("file"):
        items.append(f"file: {report['file']}")
    return '<ul class="summary">' + "".join(f"<li>{esc(i)}</li>" for i in items) + "</ul>"


def compression_report(report: Mapping[str, Any], plots: Iterable[tuple[Any, str | None]] = (),
                       title: str = "Deep Compression report") -> str:
    """The ``report.html`` of ``edl compress``: summary, stage table, per-layer table, plots.

    Args:
        report: the ``report.json`` dict (``PipelineResult.to_dict`` and ``file``).
        plots: ``(source, caption)`` pairs, ``source`` as :func:`figure` takes it.
        title: the page title.

    Returns:
        The HTML document as text.
    """
    stages = report["stages"]
    srows, sheader = stage_rows(stages)
    lrows, lheader = layer_rows(stages)
    blocks = [_summary(report), heading("Stages"), table(srows, sheader, table_id="stages"),
              heading("Layers"), table(lrows, lheader, total_last=lrows[-1][0] == TOTAL_ROW, table_id="layers")]
    plots = list(plots)
    if plots:
        blocks.append(heading("Plots"))
        blocks += [figure(source, caption) for source, caption in plots]
    return page(title, blocks)


def command_report(title: str, tables: Iterable[tuple[str | None, Sequence[Sequence[Any]], Sequence[str]]] = (),
                   plots: Iterable[tuple[Any, str | None]] = (), notes: Iterable[str] = ()) -> str:
    """The ``report.html`` of a command that prints tables and writes plots (``compare``,
    ``sensitivity``, ``bits``, ``hw …``).

    Args:
        title: the page title.
        tables: ``(caption, rows, header)`` per table, the rows the command's Markdown is made of.
        plots: ``(source, caption)`` pairs, ``source`` as :func:`figure` takes it.
        notes: lines of text shown under the tables.

    Returns:
        The HTML document as text.
    """
    blocks = [table(rows, header, caption) for caption, rows, header in tables]
    blocks += [note(n) for n in notes]
    plots = list(plots)
    if plots:
        blocks.append(heading("Plots"))
        blocks += [figure(source, caption) for source, caption in plots]
    return page(title, blocks)


def blocks_report(title: str, blocks: Iterable[str | tuple], plots: Iterable[tuple[Any, str | None]] = ()) -> str:
    """A page of text lines and tables in order, then plots: the form of
    :func:`efficientdl.report.training.report_blocks` (``edl hw train``).

    Args:
        title: the page title.
        blocks: text (``str``; blank ones skipped) and tables (``("table", rows, header)``).
        plots: ``(source, caption)`` pairs, ``source`` as :func:`figure` takes it.

    Returns:
        The HTML document as text.
    """
    out = []
    for block in blocks:
        if isinstance(block, tuple):
            out.append(table(block[1], block[2]))
        elif block.strip():
            out.append(note(block.strip()))
    plots = list(plots)
    if plots:
        out.append(heading("Plots"))
        out += [figure(source, caption) for source, caption in plots]
    return page(title, out)


def write(path: str | os.PathLike, document: str) -> None:
    """Write ``document`` to ``path`` whole (through the file format's atomic writer)."""
    from ..format import atomic_write

    atomic_write(path, document.encode("utf-8"))
