"""``--log-dir``: the trainer's per-epoch records as TensorBoard scalars, read back with
TensorBoard's own ``EventAccumulator`` and compared with the records the command prints."""

import contextlib
import io
import json
import sys

import numpy as np
import pytest
import torch
from torch import nn

from efficientdl import models
from efficientdl.cli.main import main
from efficientdl.train import Trainer, save_checkpoint
from efficientdl.train.loggers import SCALARS, TensorBoardLogger

pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed (pip install tensorboard)")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

DATA = ["--data", "digits", "--train-subset", "200", "--test-subset", "60", "--json"]


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


def scalars(log_dir):
    """``{tag: [(step, value), ...]}`` of the event files in ``log_dir``."""
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def expected(history, first_step=1):
    """The scalars the records should give: each value as the event stores it (float32)."""
    out = {}
    for step, record in enumerate(history, first_step):
        for key, tag in SCALARS.items():
            if key in record:
                out.setdefault(tag, []).append((step, float(np.float32(record[key]))))
    return out


def test_train_log_dir_scalars_equal_the_epoch_records(tmp_path):
    log_dir = tmp_path / "tb"
    code, stdout, err = run_quiet(["train", "-o", tmp_path / "m.pt", "--epochs", "2", "--log-dir", log_dir, *DATA])
    assert code == 0, err
    history = json.loads(stdout)["history"]
    assert len(history) == 2
    assert list(log_dir.glob("events.out.tfevents.*"))
    logged = scalars(log_dir)
    assert set(logged) == {"loss/train", "accuracy/train", "accuracy/test", "learning_rate"}
    assert logged == expected(history)


def test_prune_logs_sparsity_and_counts_steps_over_fits(tmp_path):
    torch.manual_seed(0)
    ckpt = tmp_path / "dense.pt"
    save_checkpoint(models.create("lenet300"), ckpt)
    log_dir = tmp_path / "tb"
    code, stdout, err = run_quiet(["prune", ckpt, "-o", tmp_path / "p.pt", "--sparsity", "0.8", "--steps", "2",
                                   "--epochs", "1", "--log-dir", log_dir, *DATA])
    assert code == 0, err
    history = json.loads(stdout)["history"]
    assert len(history) == 2 and all("sparsity" in r for r in history)      # two fits of one epoch each
    assert history[0]["sparsity"] < history[1]["sparsity"] == pytest.approx(0.8, abs=1e-3)
    logged = scalars(log_dir)
    assert logged == expected(history)
    assert [s for s, _ in logged["sparsity"]] == [1, 2]


def test_trainer_logger_protocol_and_loss_scale(tmp_path):
    torch.manual_seed(0)
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    seen = []

    class Recorder:
        def log_epoch(self, record, model, description):
            seen.append((description, record["epoch"]))

        def flush(self):
            seen.append("flush")

    with TensorBoardLogger(tmp_path / "tb") as tb:
        history = Trainer(batches, epochs=2, lr=0.01, progress=False, precision="mixed",
                          loggers=[Recorder(), tb]).fit(nn.Linear(8, 3), description="tiny")
    assert seen == [("tiny", 1), ("tiny", 2), "flush"]
    assert all("loss_scale" in r for r in history)
    logged = scalars(tmp_path / "tb")
    assert logged["loss_scale"] == expected(history)["loss_scale"]
    assert "accuracy/test" not in logged                   # no test loader, no test accuracy


def test_log_dir_without_tensorboard_is_one_line_with_the_pip_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)           # `import tensorboard` fails
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    out, log_dir = tmp_path / "m.pt", tmp_path / "tb"
    code = main(["train", "-o", str(out), "--epochs", "1", "--log-dir", str(log_dir), *DATA])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("edl train: error: ") and "pip install" in err[0] and "tensorboard" in err[0]
    assert "Traceback" not in err[0]
    assert not out.exists() and not log_dir.exists()


def test_log_dir_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "tb").write_text("not a directory")
    code = main(["train", "-o", str(tmp_path / "m.pt"), "--epochs", "1", "--log-dir", str(tmp_path / "tb"), *DATA])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "not a directory" in err[0], err
    assert not (tmp_path / "m.pt").exists()
