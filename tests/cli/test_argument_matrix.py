"""The bad-argument matrix of every ``edl`` command, generated from the parser itself so a
new command or option is covered without a new test: each input-file argument given a
missing path, a directory, a FIFO, an unreadable file, garbage or an empty file; each
numeric option a negative, non-numeric or out-of-range value.  Every case must end with
exit status 2, one line on stderr and no traceback, and write nothing."""

import argparse
import builtins
import contextlib
import io
import os

from pathlib import Path

import numpy as np
import pytest
import torch

from efficientdl.cli import main as cli
from efficientdl.core.options import Option

PARSER = cli.build_parser()


def _leaves(parser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _leaves(sub, prefix + (name,))
            return
    yield prefix, parser


LEAVES = dict(_leaves(PARSER))
# input positionals that name a file (hw commands also take registry or benchmark names)
FILE_POSITIONALS = {"checkpoint", "file", "recipe", "model", "source"}
# what each command needs besides its input to get as far as reading it
EXTRA = {
    ("prune",): ["-o", "{tmp}/o.pt", "--sparsity", "0.5"],
    ("quantize",): ["-o", "{tmp}/o.pt"],
    ("encode",): ["-o", "{tmp}/o.edlz"],
    ("export",): ["--format", "safetensors", "-o", "{tmp}/o.safetensors"],
    ("compress",): ["-o", "{tmp}/run"],
    ("compare",): ["-o", "{tmp}/cmp"],
    ("sensitivity",): ["-o", "{tmp}/sens"],
    ("bits",): ["-o", "{tmp}/bits"],
    ("hw", "roofline"): ["-o", "{tmp}/roof"],
    ("hw", "energy"): ["-o", "{tmp}/energy"],
    ("hw", "compare"): ["-o", "{tmp}/hwc"],
}
FILE_CASES = ["missing", "directory", "fifo", "unreadable", "garbage", "empty"]


def _file_commands():
    for path, parser in LEAVES.items():
        positionals = [a for a in parser._actions if not a.option_strings and a.dest in FILE_POSITIONALS]
        if positionals:
            yield path


def _numeric_options():
    bad = {"_positive_int": ["-7", "0", "x"], "_nonneg_int": ["-1", "2.5"], "_positive_float": ["-0.5", "nan", "inf"],
           "_nonneg_float": ["-1", "nan", "inf"],
           "_fraction": ["-0.1", "1.5", "nan"], "_float_list": ["a,b"], "_int_list": ["0,99", "x"],
           "per_layer_spec": ["fc1=", "=3"], "_method_list": ["nope"],
           "_json_object": ["{", "[1]"], "_model_name": ["bad spec:"], "_image_size": ["0", "axb"],
           "_number_list": ["x", "nan"]}
    for path, parser in LEAVES.items():
        for action in parser._actions:
            name = getattr(action.type, "__name__", None)
            if action.option_strings and isinstance(action.type, Option):
                for value in _out_of_range(action.type):
                    yield path, action.option_strings[-1], action.nargs, value
            elif action.option_strings and name in bad:
                for value in bad[name]:
                    yield path, action.option_strings[-1], action.nargs, value


def _out_of_range(option):
    """Values a declared numeric option refuses: not a number, and just past each end of its range."""
    if option.kind not in (int, float):
        return []
    values = ["x", "2.5" if option.kind is int else "nan"]
    if option.low is not None:
        values.append(repr(option.low if option.low_open else option.low - 1))
    if option.high is not None:
        values.append(repr(option.high if option.high_open else option.high + 1))
    return values


def _run(argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main([str(a) for a in argv])
        except SystemExit as e:
            code = e.code
    return code, err.getvalue()


def _assert_one_line(code, err):
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and ": error: " in lines[0], err
    assert "Traceback" not in err


@pytest.fixture(autouse=True)
def quiet(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _required_positionals(parser, given):
    """Placeholders for the other required positionals (none today, kept general)."""
    return [given] + ["x"] * (sum(1 for a in parser._actions if not a.option_strings and a.nargs is None
                                  and a.dest not in ("command", "hw_command", "recipe_command")) - 1)


def test_the_matrix_covers_every_command_with_an_input():
    covered = {" ".join(p) for p in _file_commands()}
    assert {"prune", "quantize", "encode", "compress", "eval", "info", "compare", "sensitivity", "bits",
            "recipe check", "hw eie", "hw roofline", "hw energy", "hw systolic", "hw compare"} <= covered


@pytest.mark.parametrize("command", sorted(_file_commands()), ids=" ".join)
@pytest.mark.parametrize("case", FILE_CASES)
def test_bad_input_file_every_command(tmp_path, monkeypatch, command, case):
    out = tmp_path / "out"
    out.mkdir()
    target = tmp_path / "input.edlz"
    if case == "directory":
        target = tmp_path / "a_directory"
        target.mkdir()
    elif case == "fifo":
        os.mkfifo(target)
    elif case == "garbage":
        target.write_bytes(b"\x00not a model, not a recipe: {[" * 20)
    elif case == "empty":
        target.write_bytes(b"")
    elif case == "unreadable":
        target.write_bytes(b"EDLZ" + b"\x00" * 60)
        real_open = builtins.open

        def denied(file, *args, **kwargs):  # root ignores permission bits, so deny at open
            if str(file) == str(target):
                raise PermissionError(13, "Permission denied", str(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", denied)   # wherever the command opens it
    parser = LEAVES[command]
    extra = [a.format(tmp=out) for a in EXTRA.get(command, [])]
    data = ["--data", "digits", "--test-subset", "40"] if any("--data" in a.option_strings
                                                              for a in parser._actions) else []
    code, err = _run([*command, *_required_positionals(parser, target), *extra, *data])
    _assert_one_line(code, err)
    if case in ("missing", "directory", "fifo", "unreadable"):
        assert str(target) in err
    assert [p for p in out.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("command,option,nargs,value", sorted(_numeric_options(), key=str),
                         ids=lambda v: " ".join(v) if isinstance(v, tuple) else str(v))
def test_bad_number_every_option(tmp_path, command, option, nargs, value):
    parser = LEAVES[command]
    positionals = [a for a in parser._actions if not a.option_strings and a.dest in FILE_POSITIONALS
                   and a.nargs is None]
    values = [value] * (nargs if isinstance(nargs, int) else 1)
    argv = [*command, *(["whatever"] if positionals else []), option, *values]
    code, err = _run(argv)
    _assert_one_line(code, err)
    assert option in err or value in err
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- your model, your data
ROOT = Path(__file__).resolve().parents[2]
#: bad forms of --model MODULE:CALLABLE (tests/fixtures/mynet.py) → a fragment of the one line
MODEL_FORMS = {
    "missing module": ("nosuch_module_xyz:build", "no module named 'nosuch_module_xyz'"),
    "callable raises": ("tests.fixtures.mynet:broken", "raised RuntimeError"),
    "not a module": ("tests.fixtures.mynet:not_a_module", "returned dict, not a torch.nn.Module"),
}
#: bad forms of --data → a fragment of the one line (the path named where there is one)
DATA_FORMS = {
    "no classes": ("empty_dir", "no class sub-folders with images (expected DIR/CLASS/*.png|jpg)"),
    "npz without x": ("nox.npz", "no array 'x'"),
    "missing npz": ("missing.npz", "no such file"),
    "callable without batches": ("tests.fixtures.mynet:build", "expected (train, test)"),
}
#: what a command needs besides EXTRA to get as far as building the model / reading the data
MODEL_EXTRA = {
    ("train",): ["-o", "{tmp}/t.pt"],
    ("dsd",): ["-o", "{tmp}/t.pt"],
    ("distill",): ["--teacher", "{inputs}/lenet.pt", "-o", "{tmp}/s.pt"],
    ("sweep",): ["--epochs-list", "1"],
    ("info",): ["--runtime"],
    ("demo",): ["-o", "{tmp}/demo"],
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Valid inputs to get past the input checks: a checkpoint, a compressed file, a recipe, bad data."""
    from efficientdl import format as fmt, models
    from efficientdl.train import save_checkpoint

    root = tmp_path_factory.mktemp("inputs")
    torch.manual_seed(0)
    model = models.create("lenet300")
    save_checkpoint(model, root / "lenet.pt")
    fmt.save(model, root / "lenet.edlz")
    (root / "recipe.yaml").write_text("model: lenet300\ndata: digits\ndense:\n  epochs: 1\n")
    (root / "empty_dir").mkdir()
    np.savez(root / "nox.npz", y=np.arange(4))
    return root


def _input_for(parser, inputs):
    """The positional input a command reads (a recipe, a compressed file or a checkpoint), if it has one."""
    for action in parser._actions:
        if not action.option_strings and action.dest in FILE_POSITIONALS:
            if action.dest == "recipe":
                return [inputs / "recipe.yaml"]
            if action.dest == "source" or parser.prog.endswith("hw compare") or parser.prog.endswith("info"):
                return [inputs / "lenet.edlz"]
            return [inputs / "lenet.pt"]
    return []


def _model_commands():
    for path, parser in LEAVES.items():
        option = next((a for a in parser._actions if "--model" in a.option_strings), None)
        if option is not None and (option.dest == "user_model" or getattr(option.type, "__name__", "") == "_model_name"):
            yield path


def _data_commands():
    for path, parser in LEAVES.items():
        if any("--data" in a.option_strings for a in parser._actions):
            yield path


def _argv(command, inputs, out, *more):
    parser = LEAVES[command]
    extra = [a.format(tmp=out, inputs=inputs) for a in EXTRA.get(command, []) + MODEL_EXTRA.get(command, [])]
    return [*command, *_input_for(parser, inputs), *extra, *more]


def test_the_model_and_data_matrices_cover_the_commands():
    models, datas = {" ".join(p) for p in _model_commands()}, {" ".join(p) for p in _data_commands()}
    assert {"train", "distill", "sweep", "dsd", "prune", "quantize", "encode", "compress", "eval", "info",
            "compare", "sensitivity", "bits", "hw roofline", "hw energy", "hw systolic", "hw eie",
            "hw compare"} <= models
    assert {"train", "prune", "quantize", "compress", "demo", "eval", "compare", "sensitivity", "bits",
            "hw roofline", "hw eie"} <= datas


@pytest.mark.parametrize("command", sorted(_model_commands()) + [("hw", "train")], ids=" ".join)
@pytest.mark.parametrize("form", MODEL_FORMS)
def test_bad_model_every_command(tmp_path, monkeypatch, inputs, command, form):
    monkeypatch.syspath_prepend(str(ROOT))
    spec, fragment = MODEL_FORMS[form]
    out = tmp_path / "out"
    out.mkdir()
    data = ["--data", "digits", "--test-subset", "40"] if command in set(_data_commands()) else []
    if command == ("hw", "train"):        # its positional model, first (an optional positional)
        argv = [*command, spec, "-o", out / "hwt"]
    else:
        argv = _argv(command, inputs, out, "--model", spec, *data)
    code, err = _run(argv)
    _assert_one_line(code, err)
    assert fragment in err and len(err.strip()) <= 300
    assert [p for p in out.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("command", sorted(_data_commands()), ids=" ".join)
@pytest.mark.parametrize("form", DATA_FORMS)
def test_bad_data_every_command(tmp_path, monkeypatch, inputs, command, form):
    monkeypatch.syspath_prepend(str(ROOT))
    name, fragment = DATA_FORMS[form]
    target = name if ":" in name else str(inputs / name)
    out = tmp_path / "out"
    out.mkdir()
    code, err = _run(_argv(command, inputs, out, "--data", target))
    _assert_one_line(code, err)
    assert fragment in err and target in err and len(err.strip()) <= 300
    assert [p for p in out.rglob("*") if p.is_file()] == []
