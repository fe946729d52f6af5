"""Your model and your data on the command line: ``--model MODULE:CALLABLE`` (tests/fixtures/mynet.py,
outside the package and not in the registry's style), ``--checkpoint`` from a plain state dict, and
``--data`` as a .npz, an image folder or a callable.  A file that records user code never imports it
on its own: ``edl eval FILE`` needs ``--model`` or ``--trust-model-code``."""

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from efficientdl import data, format as fmt
from efficientdl.cli.main import main
from efficientdl.train import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
MYNET = "tests.fixtures.mynet:build"
RECIPE = f"""\
model: {MYNET}
model_kwargs: {{width: 8}}
seed: 0
batch_size: 16
dense:
  epochs: 1
  lr: 0.05
prune:
  sparsity: 0.5
  steps: 1
  epochs: 1
quantize:
  bits: 4
  epochs: 1
"""


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a shared two-core machine
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def in_tmp_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                 # nothing lands in the checkout
    monkeypatch.syspath_prepend(str(ROOT))      # `tests.fixtures.mynet` imports from the checkout


def run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def one_line_error(code, err):
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and ": error: " in lines[0] and len(lines[0]) <= 300, err
    assert "Traceback" not in err
    return lines[0]


def write_npz(path, n=90, size=8, seed=0):
    """Three classes told apart by brightness, 1×size×size."""
    g = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = (g.random((n, 1, size, size)) * 0.3 + y[:, None, None, None] * 0.3).astype(np.float32)
    np.savez(path, x=x, y=y)
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """``edl compress RECIPE --model … --data tiny.npz`` once for the module."""
    root = tmp_path_factory.mktemp("user")
    npz = write_npz(root / "tiny.npz")
    recipe = root / "mynet.yaml"
    recipe.write_text(RECIPE)
    with pytest.MonkeyPatch.context() as m:
        m.syspath_prepend(str(ROOT))
        code, out, err = run(["compress", recipe, "--model", MYNET, "--data", npz, "-o", root / "run", "--json",
                              "--no-progress"])
    assert code == 0, err
    return root, json.loads(out)


def test_compress_records_the_import_path_and_kwargs(run_dir):
    root, report = run_dir
    arch = fmt.info(root / "run" / "mynet.edlz")["arch"]
    assert arch["import"] == MYNET and "name" not in arch
    assert arch["kwargs"] == {"width": 8, "num_classes": 3, "in_channels": 1}   # the recipe's, then the data's
    assert report["stages"] and 0 <= report["accuracy_compressed"] <= 1


def test_eval_with_model_gives_the_accuracy(run_dir):
    root, report = run_dir
    code, out, err = run(["eval", root / "run" / "mynet.edlz", "--model", MYNET, "--json"])
    assert code == 0, err
    d = json.loads(out)
    assert d["data"] == str(root / "tiny.npz")          # the data the file was compressed on
    assert d["accuracy"] == pytest.approx(report["accuracy_compressed"])


def test_eval_without_model_names_what_to_pass_and_imports_nothing(run_dir, monkeypatch):
    import sys

    root, _ = run_dir
    monkeypatch.delitem(sys.modules, "tests.fixtures.mynet", raising=False)
    code, out, err = run(["eval", root / "run" / "mynet.edlz"])
    line = one_line_error(code, err)
    assert MYNET in line and "--model" in line and "--trust-model-code" in line and out == ""
    assert "tests.fixtures.mynet" not in sys.modules        # refused before any import


def test_eval_with_trust_model_code(run_dir):
    root, report = run_dir
    code, out, err = run(["eval", root / "run" / "mynet.edlz", "--trust-model-code", "--json"])
    assert code == 0, err
    assert json.loads(out)["accuracy"] == pytest.approx(report["accuracy_compressed"])


def test_info_shows_the_import_path(run_dir):
    root, _ = run_dir
    code, out, err = run(["info", root / "run" / "mynet.edlz"])
    assert code == 0 and f"architecture: {MYNET}" in out


def test_plain_state_dict_checkpoint(tmp_path):
    from tests.fixtures.mynet import build

    npz = write_npz(tmp_path / "d.npz")
    torch.manual_seed(0)
    model = build(num_classes=3, width=8)
    plain = tmp_path / "plain.pt"
    torch.save(model.state_dict(), plain)
    code, out, err = run(["eval", plain, "--data", npz])
    assert "records no architecture" in one_line_error(code, err) and "--model" in err
    kwargs = '{"num_classes": 3, "width": 8}'
    code, out, err = run(["eval", plain, "--model", MYNET, "--model-kwargs", kwargs, "--data", npz, "--json"])
    assert code == 0, err
    assert json.loads(out)["test_size"] == 18
    # prune it: the pruned checkpoint records the import path, so loading it needs trust (or --model)
    code, out, err = run(["prune", plain, "--model", MYNET, "--model-kwargs", kwargs, "--data", npz, "--sparsity",
                          "0.5", "--epochs", "0", "-o", tmp_path / "pruned.pt", "--json"])
    assert code == 0, err
    with pytest.raises(Exception, match="never imports"):
        load_checkpoint(tmp_path / "pruned.pt")
    pruned = load_checkpoint(tmp_path / "pruned.pt", trust_model_code=True)
    assert pruned.edl_arch == {"import": MYNET, "kwargs": {"num_classes": 3, "width": 8}}
    assert float((pruned.block.conv.weight == 0).float().mean()) == pytest.approx(0.5, abs=0.01)
    # and train starts from a plain state dict with --checkpoint
    code, out, err = run(["train", "--model", MYNET, "--model-kwargs", kwargs, "--checkpoint", plain, "--data", npz,
                          "--epochs", "1", "--batch-size", "16", "-o", tmp_path / "t.pt", "--json", "--no-progress"])
    assert code == 0, err


def test_train_fills_in_the_data_and_records_it(tmp_path):
    npz = write_npz(tmp_path / "d.npz", size=6)
    code, out, err = run(["train", "--model", MYNET, "--model-kwargs", '{"width": 4}', "--data", npz, "--epochs",
                          "1", "--batch-size", "16", "-o", tmp_path / "t.pt", "--json", "--no-progress"])
    assert code == 0, err
    model = load_checkpoint(tmp_path / "t.pt", model=MYNET)
    assert model.edl_arch["kwargs"] == {"width": 4, "num_classes": 3, "in_channels": 1}
    assert model.head.out_features == 3 and model.stem.out_channels == 4


def test_the_current_directory_is_searched_first(tmp_path):
    (tmp_path / "cwd_net_mod.py").write_text(
        "from torch import nn\n\ndef make(num_classes=10, in_channels=1, input_size=28):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * input_size ** 2, num_classes))\n")
    npz = write_npz(tmp_path / "d.npz")
    code, out, err = run(["train", "--model", "cwd_net_mod:make", "--data", npz, "--epochs", "1", "--batch-size",
                          "16", "-o", tmp_path / "t.pt", "--json", "--no-progress"])
    assert code == 0, err
    assert load_checkpoint(tmp_path / "t.pt", trust_model_code=True)[1].in_features == 64   # input_size = 8


def write_image_folder(root, classes=("cat", "dog", "eel"), per_class=5, size=(10, 12), rgb=()):
    from PIL import Image

    g = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            a = (g.random((*size, 3) if c in rgb else size) * 255).astype(np.uint8)
            Image.fromarray(a).save(root / c / f"{i}.png")
    return root


def test_image_folder_classes_and_shapes(tmp_path):
    pytest.importorskip("PIL")
    folder = write_image_folder(tmp_path / "imgs")
    ds = data.load(str(folder), batch_size=4)
    assert ds.classes == ["cat", "dog", "eel"] and ds.num_classes == 3
    assert ds.input_shape == (1, 10, 12)
    assert ds.train.dataset_size == 12 and ds.test.dataset_size == 3         # one of each class held out
    assert sorted(ds.test.y.tolist()) == [0, 1, 2]
    x = ds.train.x
    assert abs(float(x.mean())) < 1e-4 and float(x.std(unbiased=False)) == pytest.approx(1, abs=1e-3)
    resized = data.load(str(folder), image_size=(8, 8), channels=3, mean=[0.5], std=[0.25])
    assert resized.input_shape == (3, 8, 8) and resized.mean == (0.5, 0.5, 0.5)


def test_image_folder_with_splits_and_rgb(tmp_path):
    pytest.importorskip("PIL")
    write_image_folder(tmp_path / "imgs" / "train", per_class=3, rgb=("dog",))
    write_image_folder(tmp_path / "imgs" / "val", classes=("cat", "dog"), per_class=2, rgb=("dog",))
    ds = data.load(str(tmp_path / "imgs"))
    assert ds.input_shape == (3, 10, 12)                                    # an RGB image among them
    assert ds.train.dataset_size == 9 and ds.test.dataset_size == 4 and len(ds.mean) == 3
    assert ds.test.y.tolist() == [0, 0, 1, 1]


def test_train_on_an_image_folder(tmp_path):
    pytest.importorskip("PIL")
    folder = write_image_folder(tmp_path / "imgs")
    code, out, err = run(["train", "--model", MYNET, "--data", folder, "--image-size", "8", "--epochs", "1",
                          "-o", tmp_path / "t.pt", "--json", "--no-progress"])
    assert code == 0, err
    assert load_checkpoint(tmp_path / "t.pt", model=MYNET).head.out_features == 3


def test_npz_with_its_own_test_split(tmp_path):
    g = np.random.default_rng(1)
    np.savez(tmp_path / "d.npz", x=g.integers(0, 256, (20, 5, 5), dtype=np.uint8), y=np.arange(20) % 4,
             x_test=g.integers(0, 256, (6, 5, 5), dtype=np.uint8), y_test=np.arange(6) % 4,
             classes=np.array(["a", "b", "c", "d"]))
    ds = data.load(str(tmp_path / "d.npz"), batch_size=8, test_subset=4)
    assert ds.classes == ["a", "b", "c", "d"] and ds.input_shape == (1, 5, 5)
    assert ds.train.dataset_size == 20 and ds.test.dataset_size == 4 and len(ds.train) == 3


def test_callable_data():
    ds = data.load("tests.fixtures.mynet:tiny_data", batch_size=32)
    assert ds.num_classes == 3 and ds.input_shape == (1, 8, 8)
    assert ds.train.dataset_size == 60 and ds.test.dataset_size == 30 and len(ds.train) == 2
    assert ds.mean == 0.0 and ds.std == 1.0                                 # used as they come


@pytest.mark.parametrize("form,fragment", [
    ("nosuch_module_xyz:build", "no module named 'nosuch_module_xyz'"),
    ("tests.fixtures.mynet:broken", "raised RuntimeError: this callable always fails"),
    ("tests.fixtures.mynet:not_a_module", "returned dict, not a torch.nn.Module"),
    ("tests.fixtures.mynet:missing", "has no attribute 'missing'"),
])
def test_bad_model_forms(tmp_path, form, fragment):
    npz = write_npz(tmp_path / "d.npz")
    (tmp_path / "o").mkdir()
    code, out, err = run(["train", "--model", form, "--data", npz, "--epochs", "1", "-o", tmp_path / "o" / "t.pt"])
    assert fragment in one_line_error(code, err)
    assert list((tmp_path / "o").iterdir()) == []


@pytest.mark.parametrize("make,fragment", [
    (lambda p: (p / "empty").mkdir() or p / "empty", "no class sub-folders with images (expected DIR/CLASS/*.png|jpg)"),
    (lambda p: np.savez(p / "nox.npz", y=np.arange(4)) or p / "nox.npz", "no array 'x'"),
    (lambda p: p / "missing.npz", "missing.npz: no such file"),
    (lambda p: (p / "bad.npz").write_bytes(b"not a zip") and p / "bad.npz", "not a readable .npz"),
    (lambda p: np.savez(p / "fy.npz", x=np.zeros((4, 2)), y=np.zeros(4)) or p / "fy.npz", "integer label"),
    (lambda p: "tests.fixtures.mynet:build", "expected (train, test)"),
])
def test_bad_data_forms(tmp_path, make, fragment):
    target = make(tmp_path)
    (tmp_path / "o").mkdir()
    code, out, err = run(["train", "--data", target, "--epochs", "1", "-o", tmp_path / "o" / "t.pt"])
    line = one_line_error(code, err)
    assert fragment in line and (str(target) in line or ":" in str(target))
    assert list((tmp_path / "o").iterdir()) == []


def test_recipe_model_form_is_validated(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: 'not a path:'\n")
    code, out, err = run(["recipe", "check", path])
    assert "bad.yaml:1: model:" in one_line_error(code, err) and "MODULE:CALLABLE" in err
    path.write_text(f"model: {MYNET}\nmodel_kwargs: 3\n")
    code, out, err = run(["recipe", "check", path])
    assert "bad.yaml:2: model_kwargs:" in one_line_error(code, err)
    path.write_text(f"model: {MYNET}\nmodel_kwargs: {{width: 4}}\nprune:\n  sparsity: {{block.conv: 0.5}}\n")
    code, out, err = run(["recipe", "check", path, "--json"])
    assert code == 0, err
    assert json.loads(out)["model"] == MYNET


def test_recorded_data_code_is_not_run_on_its_own(tmp_path):
    from efficientdl import models

    path = tmp_path / "m.edlz"
    fmt.save(models.build(MYNET, num_classes=3, kwargs={"width": 4}), path,
             meta={"data": "tests.fixtures.mynet:tiny_data"})
    code, out, err = run(["eval", path, "--model", MYNET])
    line = one_line_error(code, err)
    assert "tests.fixtures.mynet:tiny_data" in line and "--data" in line and "--trust-model-code" in line
    code, out, err = run(["eval", path, "--trust-model-code", "--json"])
    assert code == 0, err
    assert json.loads(out)["test_size"] == 30
