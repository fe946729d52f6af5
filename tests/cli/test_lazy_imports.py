"""``edl --help``, ``edl --version`` and ``edl info FILE`` must start fast: they import no torch and no
command module they do not use.  Import checks in a fresh interpreter, not timed tests (the timing is
``benchmarks/startup.py``)."""

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "matplotlib", "numba", "sklearn", "efficientdl.compress", "efficientdl.train",
         "efficientdl.models", "efficientdl.nn", "efficientdl.data")


def _modules_after(code: str) -> set[str]:
    """The names in ``sys.modules`` after running ``code`` in a fresh interpreter (its output discarded)."""
    probe = ("import sys, io, contextlib\n"
             "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
             "    try:\n"
             + "".join(f"        {line}\n" for line in code.splitlines())
             + "    except SystemExit:\n        pass\n"
             "print(__import__('json').dumps(sorted(sys.modules)))\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("flag", ["--version", "--help"])
def test_version_and_help_import_no_torch(flag):
    loaded = _modules_after(f"import efficientdl\nimport efficientdl.cli.main as m\nm.main([{flag!r}])")
    assert "torch" not in loaded
    assert not [m for m in loaded if m.split(".")[0] in HEAVY or m.startswith(HEAVY)]
    # no command module is imported to list the commands
    assert not [m for m in loaded if m.startswith("efficientdl.cli.") and m not in
                ("efficientdl.cli.main", "efficientdl.cli.common")]


def test_top_level_package_is_lazy():
    loaded = _modules_after("import efficientdl")
    assert [m for m in loaded if m.startswith("efficientdl.")] == []
    loaded = _modules_after("import efficientdl as edl\nassert callable(edl.compress.prune)")
    assert "efficientdl.compress" in loaded


def test_info_imports_only_format_and_the_renderer(tmp_path):
    import torch

    from efficientdl import format as fmt

    path = tmp_path / "tiny.edlz"
    fmt.save(torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)), path)
    baseline = _modules_after("import efficientdl.format, efficientdl.report.render, efficientdl.cli.main")
    loaded = _modules_after(f"import efficientdl.cli.main as m\nassert m.main(['info', {str(path)!r}]) == 0")
    packages = {m.split(".")[0] for m in baseline}   # running info may load more of a package format uses
    extra = {m for m in loaded - baseline if m.startswith("efficientdl") or m.split(".")[0] not in packages
             and m.split(".")[0] in HEAVY}
    assert extra <= {"efficientdl.cli.inspection", "efficientdl.core.console"}, extra
    assert "torch" not in baseline and "torch" not in loaded
