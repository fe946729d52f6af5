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
           "per_layer_spec": ["fc1=", "=3"], "_method_list": ["nope"]}
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
