"""``edl prune`` in its post-training form: calibrated methods, N:M patterns, no retraining by default."""

import contextlib
import io
import json

import pytest
import torch

from efficientdl import models
from efficientdl.cli.main import main
from efficientdl.train import load_checkpoint, save_checkpoint

DATA = ["--data", "digits", "--test-subset", "60", "--train-subset", "400", "--json"]


def run_quiet(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def checkpoint(tmp_path, one_thread):
    torch.manual_seed(0)
    path = tmp_path / "m.pt"
    save_checkpoint(models.create("lenet300"), path)
    return path


@pytest.mark.parametrize("method", ["obs", "wanda"])
def test_calibrated_method_prunes_without_retraining(checkpoint, tmp_path, method):
    out = tmp_path / "p.pt"
    code, stdout, stderr = run_quiet(["prune", checkpoint, "-o", out, "--method", method, "--sparsity", "0.5",
                                      "--calibration", "64", *DATA])
    assert code == 0, stderr
    report = json.loads(stdout)
    assert report["history"] == [] and report["settings"]["method"] == method
    assert set(report["settings"]["reconstruction_error"]) == {"fc1", "fc2", "fc3"}
    model = load_checkpoint(out)
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            assert float((module.weight == 0).float().mean()) >= 0.5 - 1e-3


def test_error_allocation_spreads_one_sparsity_over_the_layers(checkpoint, tmp_path):
    out = tmp_path / "p.pt"
    code, stdout, stderr = run_quiet(["prune", checkpoint, "-o", out, "--method", "obs", "--sparsity", "0.6",
                                      "--allocation", "error", "--calibration", "64", *DATA])
    assert code == 0, stderr
    settings = json.loads(stdout)["settings"]
    assert settings["allocation"] == "error"
    model = load_checkpoint(out)
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros == pytest.approx(0.6, abs=2e-3)
    assert len({round(v, 3) for v in settings["sparsity"].values()}) > 1       # not the same in every layer


def test_pattern_gives_exactly_n_of_m(checkpoint, tmp_path):
    out = tmp_path / "p.pt"
    code, _, stderr = run_quiet(["prune", checkpoint, "-o", out, "--pattern", "2:4", "--method", "magnitude", *DATA])
    assert code == 0, stderr
    for module in load_checkpoint(out).modules():
        if isinstance(module, torch.nn.Linear):
            kept = (module.weight != 0).reshape(module.weight.shape[0], -1, 4).sum(-1)
            assert bool((kept <= 2).all()) and float(kept.float().mean()) > 1.9


@pytest.mark.parametrize("argv,fragment", [
    (["--pattern", "2-4"], "N:M"),
    (["--pattern", "fc1=5:4"], "N:M"),
    (["--method", "sparsegpt", "--sparsity", "0.5"], "invalid choice"),
    (["--quality", "1.0", "--method", "obs"], "not --quality"),
    (["--sparsity", "0.5", "--sequential"], "post-training"),
    (["--sparsity", "0.5", "--allocation", "error"], "post-training"),
    (["--sparsity", "fc1=0.5,fc2=0.7", "--method", "obs", "--allocation", "error"], "one --sparsity"),
    (["--pattern", "2:4", "--method", "obs", "--allocation", "error"], "not with --pattern"),
    (["--sparsity", "0.5", "--method", "obs", "--allocation", "global"], "invalid choice"),
    (["--sparsity", "0.5", "--calibration", "0"], "--calibration"),
])
def test_bad_post_training_arguments_are_one_line(checkpoint, tmp_path, capsys, argv, fragment):
    out = tmp_path / "out"
    out.mkdir()
    try:
        code = main([str(a) for a in ["prune", checkpoint, "-o", out / "p.pt", *argv, *DATA]])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and fragment in err[0], err
    assert list(out.iterdir()) == []
