"""What ``edl`` leaves on disk and on its streams: files with the usual permissions
(``0o666 & ~umask``), no directory unless a file goes in it, plain whole lines when the
output is not a terminal, short error lines that never embed data, and ``edl info``'s
Huffman bits."""

import contextlib
import io
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from efficientdl import format as fmt, models
from efficientdl.cli.common import MAX_ERROR_LINE, error_line
from efficientdl.cli.main import main
from efficientdl.train import save_checkpoint

ROOT = Path(__file__).resolve().parents[2]
DATA = ["--data", "digits", "--test-subset", "20"]
pytestmark = pytest.mark.usefixtures("one_thread")


def run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:          # argparse errors
            code = e.code
    return code, out.getvalue(), err.getvalue()


@contextlib.contextmanager
def umask(mask):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def everything_under(path):
    return sorted(str(p.relative_to(path)) for p in Path(path).rglob("*"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """An untrained LeNet-300-100 checkpoint and its compressed file, outside the working directory."""
    root = tmp_path_factory.mktemp("inputs")
    torch.manual_seed(0)
    ckpt = root / "lenet300.pt"
    save_checkpoint(models.create("lenet300"), ckpt)
    return {"root": root, "ckpt": ckpt}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


# --------------------------------------------------------------------------- 1. permissions
@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_written_files_get_0666_minus_the_umask(inputs, workdir, mask):
    expected = 0o666 & ~mask
    with umask(mask):
        save_checkpoint(models.create("lenet300"), workdir / "model.pt")                  # a checkpoint
        code, _, err = run(["encode", inputs["ckpt"], "-o", workdir / "model.edlz"])       # a compressed file
        assert code == 0, err
        code, _, err = run(["sensitivity", inputs["ckpt"], "-o", workdir / "sens", "--sparsities", "0,0.5",
                            "--layers", "fc3", *DATA, "--json"])                          # JSON and a plot
        assert code == 0, err
    written = [workdir / "model.pt", workdir / "model.edlz", workdir / "sens" / "sensitivity.json",
               workdir / "sens" / "sensitivity.png"]
    assert {p.name: oct(mode(p)) for p in written} == {p.name: oct(expected) for p in written}
    assert mode(workdir / "sens") == 0o777 & ~mask                   # directories: 0o777 & ~umask
    assert json.loads((workdir / "sens" / "sensitivity.json").read_text())["curves"]
    assert not [p for p in everything_under(workdir) if p.endswith(".tmp")]


# --------------------------------------------------------------------------- 2. no empty directories
def test_json_runs_of_the_hw_commands_leave_nothing_behind(inputs, workdir):
    for argv in (["hw", "eie", "NT-We", "--json"],
                 ["hw", "formats", "--json"],
                 ["hw", "systolic", inputs["ckpt"], *DATA, "--json"],
                 ["hw", "train", "--json", "--no-plots"]):
        code, out, err = run(argv)
        assert code == 0, (argv, err)
        json.loads(out)
        assert everything_under(workdir) == [], argv


@pytest.mark.parametrize("argv", [
    ["hw", "eie", "no-such-layer"],
    ["hw", "eie", "random"],                                   # needs --shape
    ["hw", "eie", "NT-We", "--pes", "0"],
    ["hw", "roofline", "--device", "tpu-v9"],
    ["hw", "energy", "missing.edlz"],
    ["hw", "compare", "{ckpt}"],                               # a checkpoint, not a compressed file
    ["compare", "missing.pt"],
    ["sensitivity", "{ckpt}", "--sparsities", "x"],
    ["sensitivity", "missing.pt"],
    ["bits", "{ckpt}", "--bits", "0,99"],
    ["compress", "missing.yaml"],
    ["demo", "--data", "no-such-data"],
])
def test_bad_argument_runs_create_nothing(inputs, workdir, argv):
    code, _, err = run([a.replace("{ckpt}", str(inputs["ckpt"])) for a in argv])
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and ": error: " in lines[0] and "Traceback" not in err
    assert everything_under(workdir) == []


def test_an_output_directory_below_a_file_is_refused_before_any_work(inputs, workdir):
    (workdir / "afile").write_text("x")
    code, _, err = run(["sensitivity", inputs["ckpt"], "-o", "afile/sub", *DATA])
    assert code == 2 and "afile: exists and is not a directory" in err
    assert everything_under(workdir) == ["afile"]


# --------------------------------------------------------------------------- 3. not a terminal
EPOCH = re.compile(r"lenet300 epoch (\d)/2  lr \d+(\.\d+)?(e-?\d+)?  loss \d+\.\d{4}  train acc \d+\.\d{2}%  "
                   r"test acc \d+\.\d{2}%  \d+\.\d+s")


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "NO_COLOR")}
    return {**env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "COLUMNS": "80", **extra}


def test_piped_training_prints_whole_plain_lines(tmp_path):
    argv = [sys.executable, "-m", "efficientdl", "train", "--data", "digits", "--train-subset", "200",
            "--test-subset", "100", "--epochs", "2", "-o", str(tmp_path / "m.pt")]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "\x1b" not in proc.stderr + proc.stdout               # no ANSI escape codes
    lines = proc.stderr.splitlines()
    epochs = [line for line in lines if " epoch " in line]
    assert [EPOCH.fullmatch(line) is not None for line in epochs] == [True, True], lines
    assert [EPOCH.fullmatch(line).group(1) for line in epochs] == ["1", "2"]
    assert all(line.startswith(("data: ", "lenet300 epoch ")) for line in lines), lines    # nothing else, no bars
    assert all(line.strip() for line in lines), lines                                   # no broken halves
    assert proc.stdout.strip().startswith("lenet300: test accuracy ")


_LONG = """
import torch
from torch.utils.data import DataLoader, TensorDataset
from efficientdl.cli.common import _console
from efficientdl.train import Trainer

_console().print("w" * 200)
data = DataLoader(TensorDataset(torch.randn(16, 4), torch.randint(0, 2, (16,))), batch_size=8)
Trainer(data, data, epochs=1).fit(torch.nn.Linear(4, 2), description="d" * 200)
"""


def test_a_200_character_message_is_not_wrapped(tmp_path):
    proc = subprocess.run([sys.executable, "-c", _LONG], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env=_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stderr.splitlines()
    assert lines[0] == "w" * 200
    assert len(lines) == 2 and lines[1].startswith("d" * 200 + " epoch 1/1  lr ") and lines[1].endswith("s")
    assert "\x1b" not in proc.stderr


def test_in_a_terminal_the_console_stays_a_live_one(tmp_path):
    master, slave = os.openpty()
    try:
        probe = ("from efficientdl.core.console import live, stderr_console; c = stderr_console(); "
                 "print(c.is_terminal, live(c))")
        proc = subprocess.run([sys.executable, "-c", probe], stdout=subprocess.PIPE, stderr=slave, text=True,
                              timeout=120, cwd=tmp_path, env=_env())
    finally:
        os.close(slave)
        os.close(master)
    assert proc.returncode == 0 and proc.stdout.split() == ["True", "True"]


# --------------------------------------------------------------------------- 4. short error lines
class NotInTheRegistry(nn.Module):
    """A model the registry does not know: its file records no architecture."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(784, 10)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_eval_of_a_file_of_a_non_registry_model_is_one_short_line(workdir):
    path = workdir / "mine.edlz"
    fmt.save(NotInTheRegistry(), path)
    assert fmt.read(path).header["arch"] is None                   # as recorded: no registry name
    code, out, err = run(["eval", path, *DATA])
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    line = lines[0]
    assert len(line) <= MAX_ERROR_LINE, len(line)
    assert line.startswith("edl eval: error: ") and str(path) in line
    assert "Container(" not in line and "tensor(" not in line and "[[" not in line
    assert repr(fmt.read(path)).startswith("<Container ") and len(repr(fmt.read(path))) < 200


def test_error_lines_are_capped():
    assert error_line("edl x", "short\n  message") == "edl x: error: short message"
    long = error_line("edl x", "y" * 5000)
    assert len(long) == MAX_ERROR_LINE and long.endswith("…")
    code, _, err = run(["eval", "a" * 400])                         # a name the system refuses: one line too
    assert code == 2 and len(err.strip().splitlines()) == 1 and len(err.strip()) <= MAX_ERROR_LINE
    assert "File name too long" in err and "Traceback" not in err


# --------------------------------------------------------------------------- 5. edl info's bits
def test_info_reports_the_huffman_bits_of_the_file(workdir):
    from efficientdl.compress.quantization.share import share_layer

    torch.manual_seed(1)
    model = models.create("lenet300")
    share_layer(model.fc1, bits=5)
    layers = {r.name: r for r in fmt.save(model, workdir / "shared.edlz", coding="huffman")}
    code, out, err = run(["info", workdir / "shared.edlz", "--json"])
    assert code == 0, err
    got = {t["name"]: t for t in json.loads(out)["tensors"]}
    for name, r in layers.items():
        assert got[name]["weight_bits_huffman"] == pytest.approx(r.weight_bits_huffman) if r.weight_bits_huffman \
            else got[name]["weight_bits_huffman"] is None
        assert got[name]["index_bits_huffman"] == pytest.approx(r.index_bits_huffman) if r.index_bits_huffman \
            else got[name]["index_bits_huffman"] is None
    coded = got["fc1.weight"]
    assert coded["kind"] == "codes" and coded["weight_bits"] == 5
    assert 0 < coded["weight_bits_huffman"] <= 5
    code, text, err = run(["info", workdir / "shared.edlz"])
    row = next(line for line in text.splitlines() if line.startswith("| fc1.weight "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    header = [c.strip() for c in next(line for line in text.splitlines() if line.startswith("| tensor ")).strip(
        "|").split("|")]
    cell = dict(zip(header, cells))
    assert cell["weight bits"] == "5.00" and cell["Huffman weight bits"] == f"{coded['weight_bits_huffman']:.2f}"


def test_info_is_a_real_table_in_a_terminal_and_markdown_in_a_pipe(tmp_path, monkeypatch, capsys):
    import torch as _torch

    from efficientdl import format as fmt_, models as models_
    from efficientdl.cli.main import main as main_
    from efficientdl.core import console

    _torch.manual_seed(0)
    path = tmp_path / "m.edlz"
    fmt_.save(models_.create("lenet300"), path)
    assert main_(["info", str(path)]) == 0
    piped = capsys.readouterr().out
    assert "| tensor | kind |" in piped and "|---|" in piped.replace(":", "")
    monkeypatch.setattr(console, "is_tty", lambda stream: True)
    assert main_(["info", str(path)]) == 0
    shown = capsys.readouterr().out
    assert "fc1.weight" in shown and "tensor" in shown
    assert "|---" not in shown.replace(":", "")          # a drawn table, not Markdown
