"""``report.html``: one self-contained page made from the report data and the plot files.

It parses, holds the tables with the numbers of ``report.json`` (each number cell keeps its
exact value in ``data-value``), embeds every plot the command wrote (the PNG bytes, base64),
escapes every string, references no http(s) URL, and renders in headless Chromium to a page
that is not blank (the screenshot test skips where Chromium is not installed)."""

import base64
import contextlib
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

from efficientdl import models
from efficientdl.cli.main import main
from efficientdl.report import html
from efficientdl.train import save_checkpoint

TINY_RECIPE = """\
model: lenet300
data: digits
seed: 0
batch_size: 64
dense:
  epochs: 1
  lr: 0.05
prune:
  sparsity: 0.9
  steps: 1
  epochs: 1
quantize:
  bits: 4
  epochs: 1
encode:
  index_bits: 5
"""
SUBSETS = ["--train-subset", "300", "--test-subset", "120"]
DATA = ["--data", "digits", "--test-subset", "60", "--json"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)      # tiny models on a shared two-core machine
    yield
    torch.set_num_threads(threads)


def run_quiet(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


class Page(HTMLParser):
    """The tables (id → rows of cells ``(text, data-value)``), images and tags of a page."""

    def __init__(self):
        super().__init__()
        self.tables, self.images, self.tags, self.svgs = {}, [], [], 0
        self._table = self._row = self._cell = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "table":
            self._table = self.tables.setdefault(attrs.get("id") or f"table{len(self.tables)}", [])
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = ["", attrs.get("data-value")]
        elif tag == "img":
            self.images.append(attrs)
        elif tag == "svg":
            self.svgs += 1

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[0] += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(tuple(self._cell))
            self._cell = None
        elif tag == "tr":
            self._row = None
        elif tag == "table":
            self._table = None


def parse(path):
    page = Page()
    text = Path(path).read_text(encoding="utf-8")
    page.feed(text)
    page.close()
    return page, text


def assert_self_contained(page, text):
    assert "http://" not in text and "https://" not in text
    assert not [t for t, _ in page.tags if t in ("script", "link", "iframe", "object", "embed")]
    for image in page.images:
        assert image["src"].startswith("data:image/png;base64,")
    assert any(t == "meta" and a.get("http-equiv") == "Content-Security-Policy" for t, a in page.tags)


def embedded_pngs(page):
    return [base64.b64decode(i["src"].split(",", 1)[1]) for i in page.images]


def value(cell):
    return float(cell[1])


# --------------------------------------------------------------------------- the renderer
def test_strings_are_escaped_and_numbers_keep_their_value():
    rows = [["<script>alert(1)</script>", 1234567, 0.123456789, None], ['a "quoted" & name', 3, float("inf"), 2.5]]
    document = html.command_report("title <b>", [("caption & <i>", rows, ["name", "n", "x", "y"])],
                                   notes=["<img src=x onerror=alert(1)>"])
    page = Page()
    page.feed(document)
    assert not [t for t, _ in page.tags if t in ("script", "b", "i")]
    assert [t for t, _ in page.tags if t == "img"] == []
    assert "&lt;script&gt;" in document and "title &lt;b&gt;" in document
    (table,) = page.tables.values()
    assert table[0] == [("name", None), ("n", None), ("x", None), ("y", None)]
    assert table[1][0] == ("<script>alert(1)</script>", None)              # text as given, once unescaped
    assert table[1][1] == ("1,234,567", "1234567")
    assert table[1][2] == ("0.123", repr(0.123456789))
    assert table[1][3] == ("–", None)
    assert table[2][0][0] == 'a "quoted" & name' and table[2][2] == ("–", "inf")


def test_figures_png_bytes_png_file_svg_file_and_matplotlib(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    png, svg = tmp_path / "p.png", tmp_path / "p.svg"
    fig.savefig(png)
    fig.savefig(svg)
    document = html.page("plots", [html.figure(png), html.figure(png.read_bytes(), "bytes"), html.figure(svg),
                                   html.figure(fig, "live figure")])
    plt.close(fig)
    page = Page()
    page.feed(document)
    assert embedded_pngs(page) == [png.read_bytes()] * 2
    assert page.svgs == 2
    assert_self_contained(page, document)
    with pytest.raises(TypeError):
        html.figure(42)


# --------------------------------------------------------------------------- edl compress
@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    root = tmp_path_factory.mktemp("html")
    recipe = root / "tiny.yaml"
    recipe.write_text(TINY_RECIPE)
    out = root / "run"
    code, stdout, err = run_quiet(["compress", recipe, "-o", out, "--json", *SUBSETS])
    assert code == 0, err
    return out


def test_compress_report_html_has_the_tables_of_report_json(compressed):
    report = json.loads((compressed / "report.json").read_text())
    page, text = parse(compressed / "report.html")
    assert_self_contained(page, text)
    stages = page.tables["stages"]
    assert [c[0] for c in stages[0]] == ["stage", "accuracy %", "drop (points)", "file bytes", "ratio ×", "seconds"]
    assert [r[0][0] for r in stages[1:]] == [s["stage"] for s in report["stages"]]
    for row, stage in zip(stages[1:], report["stages"]):
        assert value(row[1]) == 100 * stage["accuracy_after"]
        assert int(row[3][1]) == stage["size_bytes"] and row[3][0] == f"{stage['size_bytes']:,}"
        assert value(row[4]) == stage["ratio"]
    assert int(stages[-1][3][1]) == report["compressed_bytes"]
    layers = page.tables["layers"]
    final = {layer["name"]: layer for layer in report["stages"][-1]["layers"]}
    body, total = layers[1:-1], layers[-1]
    assert [r[0][0] for r in body] == list(final)
    for row in body:
        layer = final[row[0][0]]
        assert int(row[1][1]) == layer["weights"]
        assert value(row[2]) == 100 * layer["density"]
        assert value(row[8]) == layer["ratio"]
    assert total[0][0] == "total (tensors only)"
    assert int(total[1][1]) == sum(layer["weights"] for layer in final.values())
    assert f"{report['compressed_bytes']:,} bytes" in text
    # every plot the command wrote is embedded, byte for byte
    pngs = sorted((compressed / "plots").glob("*.png"))
    assert pngs and sorted(embedded_pngs(page)) == sorted(p.read_bytes() for p in pngs)


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_compress_report_html_renders_in_headless_chromium(compressed, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed (tools/install-data.sh installs it as root with apt-get: "
                    "apt-get install chromium); the other report.html checks ran")
    shot = tmp_path / "out.png"
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                           "--window-size=1200,2000", (compressed / "report.html").resolve().as_uri()],
                          capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert shot.exists(), proc.stderr[-2000:]
    import matplotlib.image

    pixels = matplotlib.image.imread(str(shot))[..., :3]
    assert pixels.shape[:2] == (2000, 1200)
    non_white = float(np.mean(np.any(pixels < 0.98, axis=-1)))
    assert non_white > 0.01, f"the screenshot is blank ({100 * non_white:.2f}% non-white pixels)"


# --------------------------------------------------------------------------- the other commands
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "lenet300.pt"
    save_checkpoint(models.create("lenet300"), path)
    return path


def test_sensitivity_and_bits_write_report_html(checkpoint, tmp_path):
    code, stdout, err = run_quiet(["sensitivity", checkpoint, "-o", tmp_path / "sens", "--sparsities", "0,0.5",
                                   *DATA])
    assert code == 0, err
    result = json.loads(stdout)
    page, text = parse(tmp_path / "sens" / "report.html")
    assert_self_contained(page, text)
    assert embedded_pngs(page) == [(tmp_path / "sens" / "sensitivity.png").read_bytes()]
    (table,) = page.tables.values()
    layers = list(result["curves"])
    assert [c[0] for c in table[0]] == ["sparsity"] + [f"{n} acc %" for n in layers]
    for row, s in zip(table[1:], [0.0, 0.5]):
        assert [value(c) for c in row[1:]] == [100 * dict(map(tuple, result["curves"][n]))[s] for n in layers]

    code, stdout, err = run_quiet(["bits", checkpoint, "-o", tmp_path / "bits", "--bits", "2,3", *DATA])
    assert code == 0, err
    result = json.loads(stdout)
    page, text = parse(tmp_path / "bits" / "report.html")
    assert_self_contained(page, text)
    assert embedded_pngs(page) == [(tmp_path / "bits" / "bits.png").read_bytes()]
    (table,) = page.tables.values()
    for row, b in zip(table[1:], [2, 3]):
        assert int(row[0][1]) == b
        assert [value(c) for c in row[1:]] == [100 * dict(map(tuple, pts))[b] for pts in result["series"].values()]


def test_compare_writes_report_html(checkpoint, tmp_path):
    out = tmp_path / "cmp"
    code, stdout, err = run_quiet(["compare", checkpoint, "-o", out, "--methods", "int8", "--epochs", "0",
                                   "--latency-repeat", "2", *DATA])
    assert code == 0, err
    result = json.loads(stdout)
    page, text = parse(out / "report.html")
    assert_self_contained(page, text)
    assert embedded_pngs(page) == [(out / "pareto.png").read_bytes()]
    (table,) = page.tables.values()
    assert [r[0][0] for r in table[1:]] == [r["method"] for r in result["methods"]]
    for row, r in zip(table[1:], result["methods"]):
        assert value(row[1]) == 100 * r["accuracy"] and int(row[2][1]) == r["file_bytes"]


def test_hw_roofline_and_hw_train_write_report_html(tmp_path):
    code, stdout, err = run_quiet(["hw", "roofline", "-o", tmp_path / "roof", "--json"])
    assert code == 0, err
    result = json.loads(stdout)
    page, text = parse(tmp_path / "roof" / "report.html")
    assert_self_contained(page, text)
    assert embedded_pngs(page) == [(tmp_path / "roof" / "roofline.png").read_bytes()]
    (table,) = page.tables.values()
    assert [value(r[3]) for r in table[1:]] == [a["attainable_tops"] for a in result["applications"]]

    code, stdout, err = run_quiet(["hw", "train", "lenet300", "--device", "v100", "-o", tmp_path / "train", "--json"])
    assert code == 0, err
    result = json.loads(stdout)
    page, text = parse(tmp_path / "train" / "report.html")
    assert_self_contained(page, text)
    assert sorted(embedded_pngs(page)) == sorted(Path(p).read_bytes() for p in result["plots"])
    assert len(page.tables) >= 4
