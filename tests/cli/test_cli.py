"""Tests of the ``edl`` command line: bad input ends in one line on stderr and status 2; the
commands that succeed write what they promise."""

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from efficientdl import data, format as fmt, models
from efficientdl.cli.main import main
from efficientdl.train import save_checkpoint

RECIPES = Path(__file__).resolve().parents[2] / "efficientdl" / "recipes"   # package data; recipes/ links here

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


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a shared two-core machine
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def in_tmp_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may land in the checkout (e.g. a default runs/ directory)


def run_quiet(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A checkpoint, a recipe, a compressed run, and damaged inputs."""
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    ckpt = root / "lenet300.pt"
    save_checkpoint(models.create("lenet300"), ckpt)
    recipe = root / "tiny.yaml"
    recipe.write_text(TINY_RECIPE)
    out = root / "run"
    code, stdout, stderr = run_quiet(["compress", recipe, "-o", out, "--json", *SUBSETS])
    assert code == 0, stderr
    edlz = out / "lenet300.edlz"
    corrupted = root / "corrupted.edlz"
    blob = bytearray(edlz.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    corrupted.write_bytes(bytes(blob))
    garbage = root / "garbage.edlz"
    garbage.write_bytes(b"\x00garbage, not a file of ours" * 10)
    empty = root / "empty.edlz"
    empty.write_bytes(b"")
    bad_recipe = root / "bad.yaml"
    bad_recipe.write_text("model: lenet300\n\tdense: 1\n")
    return {"root": root, "ckpt": ckpt, "recipe": recipe, "out": out, "edlz": edlz, "stdout": stdout,
            "corrupted": corrupted, "garbage": garbage, "empty": empty, "bad_recipe": bad_recipe}


def assert_one_line_error(capsys, code, command):
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"edl {command}: error: "), lines[0]
    assert "Traceback" not in captured.err
    return lines[0]


def files_under(path):
    return sorted(p for p in Path(path).rglob("*") if p.is_file()) if Path(path).exists() else []


# Each command with an input file; OUT is a fresh output location (file or directory).
DATA = ["--data", "digits", "--test-subset", "40", "--json"]
COMMANDS = {
    "prune": lambda f, out: ["prune", f, "-o", out / "p.pt", "--sparsity", "0.5", "--epochs", "0", *DATA],
    "quantize": lambda f, out: ["quantize", f, "-o", out / "q.pt", "--epochs", "0", *DATA],
    "encode": lambda f, out: ["encode", f, "-o", out / "e.edlz"],
    "eval": lambda f, out: ["eval", f, *DATA],
    "info": lambda f, out: ["info", f],
    "sensitivity": lambda f, out: ["sensitivity", f, "-o", out / "sens", "--sparsities", "0,0.5", *DATA],
    "bits": lambda f, out: ["bits", f, "-o", out / "bits", "--bits", "2", *DATA],
}


def _outdir(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    return out


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("which", ["missing", "directory", "corrupted", "garbage", "empty"])
def test_bad_input_file(files, tmp_path, capsys, command, which):
    path = {"missing": tmp_path / "missing.edlz", "directory": files["root"], "corrupted": files["corrupted"],
            "garbage": files["garbage"], "empty": files["empty"]}[which]
    out = _outdir(tmp_path)
    code = main([str(a) for a in COMMANDS[command](path, out)])
    line = assert_one_line_error(capsys, code, command)
    if which in ("missing", "directory", "corrupted"):
        assert str(path) in line
    assert files_under(out) == []


@pytest.mark.parametrize("which", ["missing", "directory", "bad_recipe"])
def test_compress_bad_recipe(files, tmp_path, capsys, which):
    path = {"missing": tmp_path / "missing.yaml", "directory": files["root"], "bad_recipe": files["bad_recipe"]}[which]
    out = tmp_path / "out"
    code = main(["compress", str(path), "-o", str(out), "--data", "digits"])
    line = assert_one_line_error(capsys, code, "compress")
    assert str(path) in line
    assert files_under(out) == []
    if which == "bad_recipe":
        assert f"{path}:2:" in line


@pytest.mark.parametrize("which", ["missing", "directory", "corrupted", "garbage"])
def test_compress_bad_checkpoint(files, tmp_path, capsys, which):
    path = {"missing": tmp_path / "missing.pt", "directory": files["root"], "corrupted": files["corrupted"],
            "garbage": files["garbage"]}[which]
    out = tmp_path / "out"
    code = main(["compress", str(files["recipe"]), "--checkpoint", str(path), "-o", str(out), "--json"])
    assert_one_line_error(capsys, code, "compress")
    assert files_under(out) == []


@pytest.mark.parametrize("argv", [
    ["train", "--model", "nope", "-o", "{tmp}/m.pt", "--data", "digits", "--json", "--epochs", "0"],
    ["compress", "{recipe_nope}", "-o", "{tmp}/run", "--json"],
])
def test_unknown_model(files, tmp_path, capsys, argv):
    (tmp_path / "nope.yaml").write_text(TINY_RECIPE.replace("lenet300", "nope"))
    argv = [a.format(tmp=tmp_path, recipe_nope=tmp_path / "nope.yaml") for a in argv]
    line = assert_one_line_error(capsys, main(argv), argv[0])
    assert "nope" in line
    assert files_under(tmp_path / "run") == [] and not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize("command", ["train", "prune", "quantize", "eval", "sensitivity", "bits", "compress", "demo"])
def test_unknown_dataset(files, tmp_path, capsys, command):
    out = _outdir(tmp_path)
    f = {"compress": files["recipe"], "eval": files["edlz"]}.get(command, files["ckpt"])
    argv = {"train": ["train", "-o", out / "m.pt", "--epochs", "0"],
            "compress": ["compress", f, "-o", out / "run"],
            "demo": ["demo", "-o", out / "demo"]}.get(command) or COMMANDS[command](f, out)
    argv = [str(a) for a in argv if a not in DATA] + ["--data", "imagenet"]
    line = assert_one_line_error(capsys, main(argv), command)
    assert "imagenet" in line
    assert files_under(out) == []


@pytest.mark.parametrize("argv", [
    ["train", "-o", "{tmp}/m.pt", "--epochs", "-1"],
    ["prune", "{ckpt}", "-o", "{tmp}/p.pt", "--epochs", "-1", "--sparsity", "0.5"],
    ["quantize", "{ckpt}", "-o", "{tmp}/q.pt", "--epochs", "-1"],
    ["bits", "{ckpt}", "-o", "{tmp}/b", "--bits", "17"],
    ["train", "-o", "{tmp}/m.pt", "--lr", "0"],
    ["train", "-o", "{tmp}/m.pt", "--lr", "nan"],
    ["train", "-o", "{tmp}/m.pt", "--momentum", "2"],
    ["train", "-o", "{tmp}/m.pt", "--batch-size", "0"],
    ["train", "-o", "{tmp}/m.pt", "--seed", "-3"],
    ["train", "-o", "{tmp}/m.pt", "--train-subset", "0"],
    ["train", "-o", "{tmp}/m.pt", "--epochs", "many"],
    ["prune", "{ckpt}", "-o", "{tmp}/p.pt", "--steps", "0", "--sparsity", "0.5"],
    ["prune", "{ckpt}", "-o", "{tmp}/p.pt", "--sparsity", "fc1"],
    ["prune", "{ckpt}", "-o", "{tmp}/p.pt", "--sparsity", "fc1=x"],
    ["bits", "{ckpt}", "-o", "{tmp}/b", "--bits", "0,4"],
    ["sensitivity", "{ckpt}", "--sparsities", "a,b"],
    ["encode", "{ckpt}", "-o", "{tmp}/e.edlz", "--coding", "zip"],
    ["compare", "{ckpt}", "-o", "{tmp}/c", "--methods", "fp32,magic"],
    ["compare", "{ckpt}", "-o", "{tmp}/c", "--epochs", "-2"],
    ["info", "{edlz}", "--data", "digits"],
    ["train"],
    ["frobnicate"],
])
def test_bad_arguments_exit_2_with_one_line(files, tmp_path, capsys, argv):
    argv = [a.format(tmp=tmp_path, ckpt=files["ckpt"], edlz=files["edlz"]) for a in argv]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("edl") and ": error: " in err[0], err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv,fragment", [
    (["prune", "{ckpt}", "-o", "{tmp}/p.pt", "--sparsity", "1.5", "--epochs", "0", *DATA], "sparsity"),
    (["prune", "{ckpt}", "-o", "{tmp}/p.pt", "--sparsity", "fc9=0.5", "--epochs", "0", *DATA], "fc9"),
    (["prune", "{ckpt}", "-o", "{tmp}/p.pt", *DATA], "exactly one"),
    (["quantize", "{ckpt}", "-o", "{tmp}/q.pt", "--bits", "0", "--epochs", "0", *DATA], "bits"),
    (["quantize", "{ckpt}", "-o", "{tmp}/q.pt", "--method", "int8", "--bits", "17", "--epochs", "0", *DATA], "bits"),
    (["quantize", "{ckpt}", "-o", "{tmp}/q.pt", "--method", "fixed-point", "--activation-bits", "1", "--epochs", "0",
      *DATA], "bits"),
    (["encode", "{ckpt}", "-o", "{tmp}/e.edlz", "--index-bits", "9"], "index bits"),
    (["encode", "{ckpt}", "-o", "{tmp}/nodir/e.edlz"], "does not exist"),
    (["train", "-o", "{tmp}", "--data", "digits", "--json"], "is a directory"),
    (["sensitivity", "{ckpt}", "-o", "{tmp}/s", "--sparsities", "0,1.5", *DATA], "sparsity"),
])
def test_bad_values_after_parsing(files, tmp_path, capsys, argv, fragment):
    argv = [a.format(tmp=tmp_path, ckpt=files["ckpt"]) for a in argv]
    line = assert_one_line_error(capsys, main(argv), argv[0])
    assert fragment in line
    assert [p for p in files_under(tmp_path) if p.suffix in (".pt", ".edlz", ".json", ".png")] == []


# --------------------------------------------------------------------------- successful commands
def accuracy(model, loader):
    model.eval()
    with torch.no_grad():
        hits = sum(int((model(x).argmax(1) == y).sum()) for x, y in loader)
    return hits / sum(len(y) for _, y in loader)


def test_compress_writes_outputs(files):
    out = files["out"]
    names = {p.relative_to(out).as_posix() for p in files_under(out)}
    assert names == {"lenet300.edlz", "report.json", "report.md", "report.html", "plots/weight_histograms.png",
                     "checkpoints/dense.edlz", "checkpoints/prune.edlz", "checkpoints/quantize.edlz",
                     "checkpoints/snapshots.npz", "checkpoints/state.json"}
    assert not any(p.name.startswith(".") for p in out.rglob("*"))  # no temporary files left
    assert (out / "plots" / "weight_histograms.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "report.json").read_text())
    stdout = json.loads(files["stdout"])  # --json output parses
    for key in ("original_bytes", "compressed_bytes", "ratio", "accuracy_original", "accuracy_compressed"):
        assert stdout[key] == report[key]
    assert report["original_bytes"] == 4 * 266_610
    assert report["compressed_bytes"] == files["edlz"].stat().st_size
    assert report["bit_exact"] is True
    assert Path(report["file"]) == files["edlz"]
    md = (out / "report.md").read_text()
    assert md.startswith("# ") and f"{report['compressed_bytes']:,}" in md


def test_info_on_pipeline_file(files, capsys):
    assert main(["info", str(files["edlz"]), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    size = files["edlz"].stat().st_size
    assert d["size_bytes"] == size
    assert d["original_bytes"] == 4 * 266_610
    assert d["ratio"] == pytest.approx(4 * 266_610 / size)
    assert d["arch"]["name"] == "lenet300"
    assert {t["name"] for t in d["tensors"]} == {f"fc{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias")}
    assert main(["info", str(files["edlz"])]) == 0
    text = capsys.readouterr().out
    assert "format version 1" in text and "fc1.weight" in text


def test_eval_on_pipeline_file(files, capsys):
    assert main(["eval", str(files["edlz"]), "--data", "digits", "--test-subset", "120", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    ds = data.load("digits", test_subset=120, seed=0)
    expected = accuracy(fmt.load(files["edlz"]), ds.test)
    assert result["accuracy"] == expected
    assert result["test_size"] == 120
    report = json.loads((files["out"] / "report.json").read_text())
    assert result["accuracy"] == report["accuracy_compressed"]
    # without --data, eval uses the data set recorded in the file
    assert main(["eval", str(files["edlz"]), "--test-subset", "120", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["data"] == "digits"


def test_encode_checkpoint_round_trip(files, tmp_path, capsys):
    out = tmp_path / "dense.edlz"
    assert main(["encode", str(files["ckpt"]), "-o", str(out), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["size_bytes"] == out.stat().st_size
    original = torch.load(files["ckpt"], weights_only=True)["state_dict"]
    decoded = fmt.read(out).tensors
    assert set(decoded) == set(original)
    assert all(torch.equal(decoded[k], v) for k, v in original.items())


def test_python_m_help():
    proc = subprocess.run([sys.executable, "-m", "efficientdl", "--help"], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0
    assert proc.stdout.startswith("usage: edl")
    for command in ("train", "prune", "quantize", "encode", "compress", "eval", "info"):
        assert command in proc.stdout


def test_eval_and_info_with_compressed_runtime(files, capsys):
    argv = ["eval", str(files["edlz"]), "--test-subset", "120", "--json"]
    assert main(argv) == 0
    dense = json.loads(capsys.readouterr().out)
    assert main(argv + ["--runtime", "compressed"]) == 0
    fast = json.loads(capsys.readouterr().out)
    assert fast["runtime"] == "compressed"
    assert fast["layers"]["compressed"] == ["fc1.weight", "fc2.weight", "fc3.weight"]
    assert fast["accuracy"] == dense["accuracy"]
    assert main(["info", str(files["edlz"]), "--runtime", "--prefer", "memory", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)["runtime"]
    runtime = {m["name"]: m for m in d["layers"]}
    assert runtime["fc1.weight"]["dense_bytes"] == 4 * 300 * 784
    assert 0 < runtime["fc1.weight"]["packed_bytes"] < runtime["fc1.weight"]["dense_bytes"]
    assert runtime["fc1.weight"]["decoded_bytes"] == 0                  # prefer=memory never keeps a decoded copy
    (choice,) = runtime["fc1.weight"]["choices"].values()                 # one batch: one shape class
    assert choice["kernel"] in ("sparse", "sparse-columns") and d["settled"]["decision"] == "compressed"
    assert d["chains"]["chains"] == [{"layers": ["fc1.weight", "fc2.weight", "fc3.weight"],
                                      "activations": ["relu", "relu", "identity"]}]
    assert main(["info", str(files["edlz"]), "--runtime", "--prefer", "memory"]) == 0
    assert ("one compiled call at batch 1: fc1.weight (relu) → fc2.weight (relu) → fc3.weight"
            in capsys.readouterr().out)
    assert main(["info", str(files["edlz"]), "--runtime"]) == 0
    text = capsys.readouterr().out
    assert "fc1.weight" in text and "end to end on a random (1, 1, 28, 28) batch" in text
    code = main(["info", str(files["edlz"]), "--runtime", "--input-shape", "3,5,5"])
    assert "fc1.weight: linear expects (..., 784) input" in assert_one_line_error(capsys, code, "info")
    code = main(["eval", str(files["ckpt"]), "--runtime", "compressed"])
    assert "needs a compressed file" in assert_one_line_error(capsys, code, "eval")


def test_int8_precision_of_the_compressed_runtime(files, capsys):
    from efficientdl.cli.inspection import PRECISIONS
    from efficientdl.nn.dispatch import PRECISIONS as RUNTIME_PRECISIONS

    assert PRECISIONS == RUNTIME_PRECISIONS
    argv = ["eval", str(files["edlz"]), "--test-subset", "120", "--json", "--runtime", "compressed"]
    assert main(argv) == 0
    exact = json.loads(capsys.readouterr().out)
    assert main(argv + ["--precision", "int8"]) == 0
    int8 = json.loads(capsys.readouterr().out)
    assert int8["precision"] == "int8" and int8["layers"]["precision"] == "int8"
    assert abs(int8["accuracy"] - exact["accuracy"]) <= 0.05      # 120 images: at most 6 predictions change
    assert main(["info", str(files["edlz"]), "--runtime", "--precision", "int8", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)["runtime"]
    for layer in d["layers"]:
        for choice in layer["choices"].values():
            assert set(choice["errors"]) >= {"int8-sparse"} and max(choice["errors"].values()) < 0.05
    assert main(["info", str(files["edlz"]), "--runtime", "--precision", "int8"]) == 0
    text = capsys.readouterr().out
    assert "precision=int8" in text and "error vs exact" in text
    code = main(["eval", str(files["edlz"]), "--precision", "int8"])
    assert "--precision int8 needs --runtime compressed" in assert_one_line_error(capsys, code, "eval")


def test_hw_formats(capsys):
    assert main(["hw", "formats", "--fixed", "Q1.2", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    by_name = {f["name"]: f for f in d["formats"]}
    assert by_name["fp16"]["max"] == 65504.0 and by_name["int8"]["mult_pj"] == 0.2
    assert by_name["Q1.2"]["max"] == 1.75 and by_name["Q1.2"]["bits"] == 4
    code = main(["hw", "formats", "--fixed", "Q99.99"])
    assert "Q99.99" in assert_one_line_error(capsys, code, "hw formats")
    code = main(["hw", "formats", "--energy-table", "/nonexistent.yaml"])
    assert "no such file" in assert_one_line_error(capsys, code, "hw formats")


def test_hw_roofline(files, tmp_path, capsys):
    assert main(["hw", "roofline", "-o", str(tmp_path / "tpu"), "--json"]) == 0
    apps = {(a["device"], a["name"]): a for a in json.loads(capsys.readouterr().out)["applications"]}
    assert apps[("tpu-v1", "MLP0")]["attainable_tops"] == pytest.approx(200 * 34e9 / 1e12)
    assert apps[("tpu-v1", "CNN0")]["bound"] == "compute"
    assert (tmp_path / "tpu" / "roofline.png").stat().st_size > 0
    argv = ["hw", "roofline", str(files["edlz"]), "--batch", "4", "--test-subset", "10", "-o", str(tmp_path / "m"),
            "--json"]
    assert main(argv) == 0
    layers = json.loads(capsys.readouterr().out)["layers"]
    dense = {l["name"]: l for l in layers if l["storage"] == "dense"}
    comp = {l["name"]: l for l in layers if l["storage"] == "compressed"}
    assert dense["fc1"]["weight_bytes"] == 4 * 784 * 300 and dense["fc1"]["ops"] == 2 * 784 * 300 * 4
    assert comp["fc1"]["weight_bytes"] < dense["fc1"]["weight_bytes"]
    code = main(["hw", "roofline", "--device", "tpu-v9"])
    assert "unknown device" in assert_one_line_error(capsys, code, "hw roofline")


def test_hw_energy(files, tmp_path, capsys):
    argv = ["hw", "energy", str(files["edlz"]), "--test-subset", "10", "-o", str(tmp_path), "--json"]
    assert main(argv + ["--on-chip-kib", "1024"]) == 0
    d = json.loads(capsys.readouterr().out)
    dense, comp = d["storage"]["dense"], d["storage"]["compressed"]
    assert dense["weight_bytes"] == 4 * 266_200 and not dense["weights_on_chip"]      # 1.06 MB > 1 MiB
    assert dense["dram_pj"] == pytest.approx(266_200 * 640)
    assert comp["weights_on_chip"] and comp["dram_pj"] == 0
    assert d["ratio"] == pytest.approx(dense["total_pj"] / comp["total_pj"]) and d["ratio"] > 100
    assert (tmp_path / "energy.png").stat().st_size > 0
    code = main(["hw", "energy", str(tmp_path / "missing.edlz")])
    assert "no such file" in assert_one_line_error(capsys, code, "hw energy")


@pytest.mark.parametrize("text,message", [
    ("model: lenet300\nprune:\n  sparsity: {fc9: 0.5}\n", "bad.yaml:3: prune.sparsity: 'fc9' matches no prunable layer"),
    ("model: lenet300\nprune:\n  sparsity: 1.5\n", "bad.yaml:3: prune.sparsity: must be ≤ 1"),
    ("model: nonet\n", "bad.yaml:1: unknown model 'nonet'"),
    ("model: lenet300\nprune:\n  sparsity: 0.5\n  colour: red\n", "bad.yaml:4"),
])
def test_recipe_check_reports_file_line_and_runs_nothing(tmp_path, capsys, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    code = main(["recipe", "check", str(path)])
    assert message in assert_one_line_error(capsys, code, "recipe check")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_recipe_check_accepts_the_shipped_recipes(capsys):
    for name in ("lenet300", "lenet5"):
        assert main(["recipe", "check", str(RECIPES / f"{name}.yaml"), "--json"]) == 0
        d = json.loads(capsys.readouterr().out)
        assert d["valid"] and d["model"] == name and d["stages"] == ["dense", "prune", "quantize", "encode"]


def test_hw_eie_on_a_benchmark_layer_and_a_file(files, tmp_path, capsys):
    assert main(["hw", "eie", "NT-We", "--json"]) == 0
    (layer,) = json.loads(capsys.readouterr().out)["layers"]
    assert layer["name"] == "NT-We" and layer["reference_us"] == 7.5
    assert abs(layer["latency_us"] / 7.5 - 1) < 0.1 and layer["max_rel_error"] < 1e-12
    argv = ["hw", "eie", str(files["edlz"]), "--pes", "8", "--test-subset", "10", "--json", "--sweep",
            "-o", str(tmp_path)]
    assert main(argv) == 0
    d = json.loads(capsys.readouterr().out)
    assert [l["name"] for l in d["layers"]] == ["fc1", "fc2", "fc3"] and d["skipped"] == []
    assert all(l["max_rel_error"] < 1e-9 for l in d["layers"])
    assert d["layers"][0]["sweep"]["pe_speedup"][0] == [1, 1.0]
    assert (tmp_path / "eie_fifo_depth.png").stat().st_size > 0
    assert main(["hw", "eie", "random", "--shape", "300", "200", "--weight-density", "0.2", "--pes", "4",
                 "--json"]) == 0
    (layer,) = json.loads(capsys.readouterr().out)["layers"]
    assert (layer["cols"], layer["rows"]) == (300, 200) and abs(layer["weight_density"] - 0.2) < 0.02
    code = main(["hw", "eie", "random"])
    assert "--shape" in assert_one_line_error(capsys, code, "hw eie")
    code = main(["hw", "eie", "Alex-9"])
    assert "not a benchmark layer" in assert_one_line_error(capsys, code, "hw eie")
    code = main(["hw", "eie", "NT-We", "--fifo-depth", "1"])
    assert "fifo_depth" in assert_one_line_error(capsys, code, "hw eie")


def test_hw_compare(files, tmp_path, capsys):
    argv = ["hw", "compare", str(files["edlz"]), "--test-subset", "10", "-o", str(tmp_path), "--json"]
    assert main(argv) == 0
    d = json.loads(capsys.readouterr().out)
    rows = {r["platform"]: r for r in d["platforms"]}
    assert list(rows) == ["CPU dense", "CPU sparse", "GPU dense", "GPU sparse", "TPU", "EIE"]
    assert rows["CPU dense"]["speedup"] == 1.0 and rows["CPU dense"]["energy_efficiency"] == 1.0
    # roofline by hand for the dense CPU: every fc layer is memory-bound on fp32 weights at batch 1
    bytes_ = 4 * (784 * 300 + 300 * 100 + 100 * 10) + 4 * (784 + 300 + 300 + 100 + 100 + 10)
    assert rows["CPU dense"]["latency_us"] == pytest.approx(bytes_ / 51e9 * 1e6)
    assert rows["EIE"]["energy_efficiency"] > rows["GPU sparse"]["energy_efficiency"]
    assert (tmp_path / "compare.png").stat().st_size > 0
    code = main(["hw", "compare", str(files["ckpt"])])
    assert "needs a compressed file" in assert_one_line_error(capsys, code, "hw compare")


def test_dsd_command(tmp_path, capsys):
    argv = ["dsd", "--phase-epochs", "1", "1", "1", "--sparsity", "0.6", "--data", "digits", "--train-subset", "300",
            "--test-subset", "100", "--baseline", "-o", str(tmp_path / "dsd.pt"), "--json"]
    assert main(argv) == 0
    d = json.loads(capsys.readouterr().out)
    assert {"dense", "sparse", "redense", "baseline"} <= set(d) and d["sparsity"]["fc1"] == pytest.approx(0.6, abs=0.01)
    state = torch.load(tmp_path / "dsd.pt", weights_only=True)["state_dict"]
    assert set(state) == {f"fc{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias")}     # the mask is lifted
    with pytest.raises(SystemExit) as exit_info:                 # argparse: one line, status 2
        main(["dsd", "--sparsity", "1.5", "-o", str(tmp_path / "x.pt")])
    assert exit_info.value.code == 2 and "expected a number in [0, 1]" in capsys.readouterr().err


def test_distill_command_with_a_compressed_teacher(files, tmp_path, capsys):
    argv = ["distill", "--teacher", str(files["edlz"]), "--teacher", str(files["ckpt"]), "--data", "digits",
            "--train-subset", "200", "--test-subset", "100", "--epochs", "1", "--baseline",
            "-o", str(tmp_path / "student.pt"), "--json"]
    assert main(argv) == 0
    d = json.loads(capsys.readouterr().out)
    assert len(d["teacher_accuracy"]) == 2 and d["train_size"] == 200
    assert 0 <= d["student_accuracy"] <= 1 and 0 <= d["hard_label_accuracy"] <= 1
    assert (tmp_path / "student.pt").exists()
    code = main(["distill", "--teacher", str(tmp_path / "missing.pt"), "-o", str(tmp_path / "s.pt")])
    assert "no such file" in assert_one_line_error(capsys, code, "distill")


def test_train_data_parallel_two_processes(tmp_path, capfd):
    out = tmp_path / "ddp.pt"
    argv = ["train", "--nproc-per-node", "2", "--data", "digits", "--epochs", "1", "--train-subset", "256",
            "--test-subset", "64", "-o", str(out), "--json"]
    assert main(argv) == 0
    d = json.loads(capfd.readouterr().out)            # rank 0 reports from its own process
    assert d["processes"] == 2 and 0 <= d["accuracy"] <= 1
    assert set(torch.load(out, weights_only=True)["state_dict"]) == {f"fc{i}.{p}" for i in (1, 2, 3)
                                                                     for p in ("weight", "bias")}


def test_sweep_command(capsys):
    argv = ["sweep", "--lrs", "0.01,0.1", "--epochs-list", "1", "--data", "digits", "--train-subset", "200",
            "--test-subset", "60", "--jobs", "2", "--json"]
    assert main(argv) == 0
    d = json.loads(capsys.readouterr().out)
    assert len(d["runs"]) == 2 and d["best"] == d["runs"][0]
    assert d["runs"][0]["accuracy"] >= d["runs"][1]["accuracy"]


def test_train_under_torchrun(tmp_path):
    out = tmp_path / "tr.pt"          # torch.distributed.run is what the torchrun script runs
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "efficientdl", "train",
                           "--data", "digits", "--epochs", "1", "--train-subset", "256", "--test-subset", "64",
                           "-o", str(out), "--json"], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["processes"] == 2 and out.exists()


@pytest.mark.parametrize("method,extra", [("fixed-point", ["--bits", "6"]), ("int8", ["--per-tensor"])])
def test_linear_quantization_checkpoint_encodes_and_evaluates(files, tmp_path, method, extra):
    q, e = tmp_path / "q.pt", tmp_path / "q.edlz"
    code, out, err = run_quiet(["quantize", files["ckpt"], "-o", q, "--method", method, *extra,
                                "--epochs", "1", "--calibration-batches", "2", *SUBSETS, *DATA])
    assert code == 0, err
    result = json.loads(out)
    assert set(result["layers"]) == {"fc1", "fc2", "fc3"} and result["left_dense"] == []
    assert all(entry["input"]["bits"] == 8 for entry in result["layers"].values())
    code, out, err = run_quiet(["encode", q, "-o", e, "--json"])
    assert code == 0, err
    kinds = {r["name"]: r["kind"] for r in json.loads(out)["layers"]}
    assert kinds["fc1.weight"] == "quant" and kinds["fc1.bias"] == "dense"
    code, out, err = run_quiet(["eval", e, *DATA])
    assert code == 0, err
    assert json.loads(out)["accuracy"] == pytest.approx(result["accuracy_after"], abs=1e-9)


@pytest.mark.parametrize("method", ["twn", "binary"])
def test_ternary_quantization_from_the_command_line(files, tmp_path, method):
    """The quantizer registry's ternary entries: fc2 gets ±α (and 0) weights, fc1 and fc3 stay fp32."""
    q, e = tmp_path / "q.pt", tmp_path / "q.edlz"
    code, out, err = run_quiet(["quantize", files["ckpt"], "-o", q, "--method", method, "--epochs", "0",
                                *SUBSETS, *DATA])
    assert code == 0, err
    assert json.loads(out)["layers"] == ["fc2"]
    state = torch.load(q, weights_only=True)["state_dict"]
    values = torch.unique(state["fc2.weight"])
    assert len(values) == (3 if method == "twn" else 2) and torch.allclose(values.abs()[values != 0],
                                                                         values.abs().max().expand(2))
    assert len(torch.unique(state["fc1.weight"])) > 100
    code, out, err = run_quiet(["encode", q, "-o", e, "--json"])
    assert code == 0, err
    assert {r["name"]: r["kind"] for r in json.loads(out)["layers"]}["fc2.weight"] in ("shared", "codes")


def test_compare_writes_table_plot_and_files(files, tmp_path):
    out = tmp_path / "cmp"
    code, stdout, err = run_quiet(["compare", files["ckpt"], "-o", out, "--methods", "fp32,int8,fixed-point-8",
                                   "--epochs", "0", "--latency-repeat", "3", *SUBSETS, *DATA])
    assert code == 0, err
    result = json.loads(stdout)
    assert [r["method"] for r in result["methods"]] == ["fp32", "int8", "fixed-point-8"]
    for r in result["methods"]:
        assert r["file_bytes"] == (out / "files" / f"{r['method']}.edlz").stat().st_size
    assert set(result["pareto_front"]) <= {"fp32", "int8", "fixed-point-8"} and result["pareto_front"]
    assert (out / "pareto.png").stat().st_size > 0 and (out / "compare.md").exists()


def test_interrupted_compress_leaves_no_output_and_resumes_to_the_same_file(files, tmp_path, monkeypatch):
    from efficientdl.compress import pipeline

    out = tmp_path / "run"
    real_share = pipeline.share

    def interrupted(*args, **kwargs):        # Ctrl-C during weight sharing, after pruning finished
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "share", interrupted)
    code, _, err = run_quiet(["compress", files["recipe"], "-o", out, "--json", *SUBSETS])
    assert code == 130 and "interrupted" in err
    left = {p.relative_to(out).as_posix() for p in files_under(out)}
    assert left == {"checkpoints/dense.edlz", "checkpoints/prune.edlz", "checkpoints/snapshots.npz",
                    "checkpoints/state.json"}                     # no output file, no temporary file
    monkeypatch.setattr(pipeline, "share", real_share)
    code, stdout, err = run_quiet(["compress", files["recipe"], "-o", out, "--json", "--resume", *SUBSETS])
    assert code == 0, err
    resumed = json.loads(stdout)
    # the uninterrupted run of the same recipe (module fixture) wrote the same bytes
    assert (out / "lenet300.edlz").read_bytes() == files["edlz"].read_bytes()
    expected = json.loads(files["stdout"])
    assert [s["accuracy_after"] for s in resumed["stages"]] == [s["accuracy_after"] for s in expected["stages"]]


def test_resume_with_another_recipe_is_refused(files, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["compress", str(files["recipe"]), "-o", str(out), "--json", *SUBSETS]) == 0
    other = tmp_path / "other.yaml"
    other.write_text(TINY_RECIPE.replace("bits: 4", "bits: 3"))
    capsys.readouterr()
    code = main(["compress", str(other), "-o", str(out), "--resume", *SUBSETS])
    line = assert_one_line_error(capsys, code, "compress")
    assert "another recipe" in line


def test_train_with_warmup_and_clipping(tmp_path, capsys):
    out = tmp_path / "m.pt"
    code, stdout, err = run_quiet(["train", "-o", out, "--epochs", "1", "--warmup-epochs", "0.5",
                                   "--clip-grad-norm", "0.001", *SUBSETS, *DATA])
    assert code == 0, err
    history = json.loads(stdout)["history"]
    steps = -(-300 // 128)                                    # 300 training images, batch 128
    assert history[0]["clipped_steps"] == steps               # a norm of 0.001 clips every step
    code = main(["train", "-o", str(out), "--clip-grad-norm", "1", "--precision", "mixed", "--epochs", "1",
                 *SUBSETS, *DATA])
    assert "clip_grad_norm" in assert_one_line_error(capsys, code, "train")


def test_resume_with_other_data_or_damaged_state_is_refused(files, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["compress", str(files["recipe"]), "-o", str(out), "--json", *SUBSETS]) == 0
    capsys.readouterr()
    other = ["--train-subset", "200", "--test-subset", "120"]
    code = main(["compress", str(files["recipe"]), "-o", str(out), "--resume", "--json", *other])
    assert "another starting model or data" in assert_one_line_error(capsys, code, "compress")
    (out / "checkpoints" / "state.json").write_text("[1, 2]")
    code = main(["compress", str(files["recipe"]), "-o", str(out), "--resume", "--json", *SUBSETS])
    assert "damaged checkpoints" in assert_one_line_error(capsys, code, "compress")
