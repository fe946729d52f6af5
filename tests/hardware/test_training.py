"""The training-step model against hand-worked numbers (never against its own output)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest
from torch import nn

from efficientdl.hardware.energy import HardwareError
from efficientdl.hardware.training import (
    Link,
    Topology,
    TrainingDevice,
    allreduce_time_s,
    calibrate_fraction,
    check_fits,
    data_parallel_step,
    get_link,
    get_training_device,
    largest_batch,
    load_hardware_file,
    memory_footprint,
    parameter_server_time_s,
    ring_allreduce_time_s,
    training_step,
)
from efficientdl.hardware.workload import TrainingLayer, TrainingWorkload
from efficientdl.train.step_workload import training_workload

# a device with round numbers: 1 TFLOP/s, 100 GB/s, 1 GB
DEV = TrainingDevice("unit", "test device", "hand", {"fp32": 1e12, "fp16": 4e12}, 100e9, 1e9, 100.0, ("fp16",))


def _layers(workload):
    return {layer.name: layer for layer in workload.layers}


# --------------------------------------------------------------------------- FLOP counts per layer type
def test_conv_macs_and_training_flops_by_hand():
    # conv 3→8, 3×3, padding 1 on 8×8: MACs = 8·3·9·64 = 13,824; first layer: no backward-data
    # conv 8→4, 1×1 on 8×8: MACs = 4·8·64 = 2,048
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.Conv2d(8, 4, 1, bias=False))
    w = training_workload(model, (3, 8, 8))
    c0, c1 = w.layers
    assert (c0.kind, c0.macs, c0.params, c0.needs_input_grad) == ("conv", 13_824, 216, False)
    assert (c1.macs, c1.params, c1.needs_input_grad) == (2_048, 32, True)
    step = training_step(w, DEV, batch=2, achieved_fraction=1.0)
    l0, l1 = step.layers
    assert l0.forward.flops == 2 * 13_824 * 2 and l0.backward_data.flops == 0
    assert l0.backward_weight.flops == 2 * 13_824 * 2
    assert l1.flops == 3 * 2 * 2_048 * 2            # backward = 2 × forward for a non-first layer


def test_nchw_convolution_on_tensor_cores_pays_layout_transposes_by_hand():
    # conv 8→4, 1×1 on 8×8 (the second layer: all three phases), fp16 on DEV's tensor cores, batch 2:
    # I = 2·8·64 = 1,024, O = 2·4·64 = 512 elements of 2 bytes, 32 weights of 2 bytes (gradients 2 bytes)
    # transposes per phase: 2·(1,536·2 + 32·2) = 6,272 bytes = 62.72 ns at 100 GB/s
    model = nn.Sequential(nn.Conv2d(3, 8, 1, bias=False), nn.Conv2d(8, 4, 1, bias=False))
    w = training_workload(model, (3, 8, 8))
    nchw = training_step(w, DEV, 2, "fp16", achieved_fraction=1.0)
    nhwc = training_step(w, DEV, 2, "fp16", achieved_fraction=1.0, memory_format="nhwc")
    a, b = nchw.layers[1], nhwc.layers[1]
    for pa, pb in zip(a.phases, b.phases):
        assert pa.layout_bytes == 6_272 and pb.layout_bytes == 0
        assert pa.bytes == pb.bytes + 6_272
        assert pa.time_s == pytest.approx(pb.time_s + 62.72e-9)
        assert pa.bound == "memory"
    assert nchw.layout_s == pytest.approx(62.72e-9 * 3 + 2 * 2 * (2 * 3 * 64 * 2 + 2 * 8 * 64 * 2 + 24 * 2) / 100e9)
    assert nchw.step_time_s == pytest.approx(nhwc.step_time_s + nchw.layout_s)
    # fp32 runs on DEV's CUDA-core-like units (not its tensor precisions): NCHW is native, no transposes
    assert training_step(w, DEV, 2, "fp32", achieved_fraction=1.0).layout_s == 0
    with pytest.raises(HardwareError, match="unknown memory format"):
        training_step(w, DEV, 2, "fp16", memory_format="chwn")


def test_nchw_fit_predicts_a_faster_channels_last_run():
    # a fit on an NCHW tensor-core run explains part of the time by the transposes, so the same
    # factor predicts channels-last faster, and the fit reproduces its own figure
    w = training_workload(nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.Conv2d(64, 64, 3, padding=1)),
                          (3, 32, 32))
    truth = training_step(w, DEV, 16, "fp16", achieved_fraction=0.3)
    f = calibrate_fraction(w, DEV, 16, truth.samples_per_s, "fp16", memory_format="nchw")
    assert f == pytest.approx(0.3, rel=1e-6)
    assert training_step(w, DEV, 16, "fp16", achieved_fraction=f, memory_format="nhwc").samples_per_s \
        > truth.samples_per_s


def test_linear_bytes_by_hand():
    # fc 100→10 with bias, batch 4, fp32: params 1,010; fwd bytes = 1010·4 + 4·(100+10)·4 = 5,800
    w = training_workload(nn.Sequential(nn.Linear(100, 10)), (100,))
    (fc,) = w.layers
    assert (fc.kind, fc.macs, fc.params) == ("fc", 1_000, 1_010)
    (cost,) = training_step(w, DEV, 4, achieved_fraction=1.0).layers
    assert cost.forward.bytes == 5_800
    assert cost.backward_weight.bytes == 4 * 110 * 4 + 1_010 * 4
    # 8,000 FLOPs at 1 TFLOP/s = 8 ns; 5,800 B at 100 GB/s = 58 ns → memory-bound
    assert cost.forward.time_s == pytest.approx(58e-9) and cost.forward.bound == "memory"


def test_lstm_macs_by_hand():
    # LSTM input 6, hidden 5, 2 layers, T = 7: per step 4·5·(6+5) + 4·5·(5+5) = 220 + 200 = 420
    lstm = nn.LSTM(6, 5, num_layers=2, batch_first=True)

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = lstm

        def forward(self, x):
            return self.lstm(x)[0]

    (layer,) = training_workload(M(), (7, 6)).layers
    assert layer.kind == "lstm" and layer.macs == 7 * 420
    assert layer.params == 4 * 5 * (6 + 5 + 2) + 4 * 5 * (5 + 5 + 2)


def test_attention_macs_by_hand():
    # L = S = 10, E = 8: projections 4·L·E² = 2,560; scores + values 2·L²·E = 1,600
    attn = nn.MultiheadAttention(8, 2, batch_first=True)

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = attn

        def forward(self, x):
            return self.attn(x, x, x, need_weights=False)[0]

    (layer,) = training_workload(M(), (10, 8)).layers
    assert layer.kind == "attention" and layer.macs == 2_560 + 1_600
    assert layer.params == 4 * 64 + 4 * 8


def test_resnet50_counts():
    from efficientdl import models

    w = training_workload(models.create("resnet50", num_classes=1000, in_channels=3), (3, 224, 224))
    assert w.params == 25_557_032
    assert 4.08e9 < w.macs < 4.10e9                   # the usual 4.1 GMACs
    assert sum(layer.kind == "conv" for layer in w.layers) == 53
    assert sum(layer.kind == "add" for layer in w.layers) == 16


# --------------------------------------------------------------------------- all-reduce and overlap
def test_ring_allreduce_closed_form():
    # 2(N−1)/N · G/β + 2(N−1)·α
    assert ring_allreduce_time_s(1e9, 2, 1e9) == pytest.approx(1.0)
    assert ring_allreduce_time_s(1e9, 4, 1e9) == pytest.approx(1.5)
    assert ring_allreduce_time_s(1e9, 4, 1e9, latency_s=1e-3) == pytest.approx(1.5 + 6e-3)
    assert ring_allreduce_time_s(1e9, 1, 1e9) == 0.0


def test_parameter_server_closed_form():
    # 4 workers, 1 server, G = 1 GB, β = 1 GB/s: push 4 s + pull 4 s
    assert parameter_server_time_s(1e9, 4, 1e9) == pytest.approx(8.0)
    assert parameter_server_time_s(1e9, 4, 1e9, servers=4, latency_s=0.5) == pytest.approx(3.0)


def test_hierarchical_and_slowest_link():
    fast, slow = Link("f", 100e9, 0.0, "t"), Link("s", 1e9, 0.0, "t")
    topo = Topology("t", 4, fast, slow, 1)
    # flat ring over 8 devices crossing the 1 GB/s link: 2·7/8 · 1 GB / 1 GB/s = 1.75 s
    assert allreduce_time_s(1e9, 8, topo, "ring") == pytest.approx(1.75)
    # 2-D: 2·3/4·1e9/1e11 = 0.015 s in the node + 2·1/2·1e9/1e9 = 1 s across 2 nodes
    assert allreduce_time_s(1e9, 8, topo, "hierarchical") == pytest.approx(1.015)
    assert allreduce_time_s(1e9, 4, topo, "ring") == pytest.approx(2 * 3 / 4 * 1e9 / 100e9)


def _mlp(widths=(64, 256, 256, 10)):
    layers = []
    for a, b in zip(widths, widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


@pytest.mark.parametrize("bw", [1e6, 1e9, 1e12])
def test_overlap_never_faster_than_slowest_component(bw):
    w = training_workload(_mlp(), (64,))
    step = training_step(w, DEV, 32, achieved_fraction=0.5)
    topo = Topology("t", 8, Link("l", bw, 1e-5, "t"))
    for n in (2, 4, 8):
        dp = data_parallel_step(step, n, topo, bucket_bytes=50_000, first_bucket_bytes=10_000)
        comm = sum(ring_allreduce_time_s(b.size_bytes, n, bw, 1e-5) for b in dp.buckets)
        assert dp.step_time_s >= step.step_time_s - 1e-15
        assert dp.step_time_s >= comm
        assert dp.step_time_s <= step.step_time_s + comm + 1e-15
        nov = data_parallel_step(step, n, topo, bucket_bytes=50_000, first_bucket_bytes=10_000, overlap=False)
        assert nov.step_time_s == pytest.approx(step.step_time_s + comm)


# --------------------------------------------------------------------------- memory
def test_memory_footprint_small_mlp_by_hand():
    # 64→256→256→10: params 64·256+256 + 256·256+256 + 256·10+10 = 85,002
    w = training_workload(_mlp(), (64,))
    assert w.params == 85_002
    # saved per sample: inputs of the fcs (64, 256, 256) and the ReLU outputs, which ARE the next fc's inputs
    # (counted once): 64 + 256 + 256 = 576 elements
    adam = memory_footprint(w, 16, "fp32", "adam")
    assert adam.weights_bytes == 85_002 * 4 and adam.gradients_bytes == 85_002 * 4
    assert adam.optimizer_state_bytes == 85_002 * 8 and adam.master_weights_bytes == 0
    assert adam.activations_bytes == 16 * 576 * 4
    mixed = memory_footprint(w, 16, "fp16", "adam")   # ZeRO: 2 + 2 + 12 bytes per parameter
    assert mixed.static_bytes == 85_002 * 16 and mixed.activations_bytes == 16 * 576 * 2


def test_largest_batch_and_error():
    w = training_workload(_mlp(), (64,))
    tiny = TrainingDevice("tiny", "t", "t", {"fp32": 1e9}, 1e9, 2e6, 1.0)   # 1.9 MB usable
    # static fp32 sgd: 85,002 · 12 = 1,020,024 B; per sample 576·4 = 2,304 B → (1.9e6 − 1,020,024) // 2,304
    assert largest_batch(w, tiny, "fp32", "sgd") == (1_900_000 - 1_020_024) // 2_304
    with pytest.raises(HardwareError, match="largest batch that fits is 381"):
        check_fits(w, tiny, 1000)
    none = TrainingDevice("none", "t", "t", {"fp32": 1e9}, 1e9, 1e6, 1.0)
    with pytest.raises(HardwareError, match="cannot train"):
        check_fits(w, none, 1)


def test_checkpointing_uses_less_memory():
    w = TrainingWorkload("chain", tuple(TrainingLayer(f"l{i}", "fc", "g", 100, 100, 10, 10, 10) for i in range(16)))
    # 16 layers → 4 segments of 4: checkpoints 4·10 + largest segment 4·10 = 80 elements (vs 160)
    assert memory_footprint(w, 1, checkpointing=True).activations_bytes == 80 * 4
    assert memory_footprint(w, 1).activations_bytes == 160 * 4


def test_no_weighted_layer_refused():
    w = TrainingWorkload("relu-only", (TrainingLayer("act", "act", "g", 0, 0, 10, 10, 10),))
    with pytest.raises(HardwareError, match="no weighted layer"):
        training_step(w, DEV, 1)


def test_calibration_recovers_fraction():
    # a compute-bound layer: 2·1e9 MACs, tiny bytes; at fraction 0.25 one step of batch 1 takes 3·2e9/(0.25e12)
    w = TrainingWorkload("big", (TrainingLayer("l", "fc", "g", 10**9, 10, 1, 1, 1, needs_input_grad=True),))
    t = 3 * 2e9 / 0.25e12
    assert calibrate_fraction(w, DEV, 1, 1 / t) == pytest.approx(0.25, rel=1e-6)


def test_device_lacks_precision():
    with pytest.raises(HardwareError, match="no tf32"):
        training_step(training_workload(_mlp(), (64,)), get_training_device("v100"), 8, "tf32")


# --------------------------------------------------------------------------- YAML
def _write(tmp_path, text):
    p = tmp_path / "hw.yaml"
    p.write_text(text)
    return p


def test_yaml_devices_and_links(tmp_path):
    p = _write(tmp_path, "devices:\n  - name: x\n    peak_flops: {fp32: 2.0e12}\n    memory_bandwidth_bytes_per_s: 1.0e11\n"
                         "    memory_bytes: 4.0e9\n    tdp_w: 50\nlinks:\n  - {name: y, bytes_per_s: 1.0e9, latency_s: 0}\n"
                         "topologies:\n  - {name: z, devices_per_node: 2, intra_link: y, inter_link: ib-hdr}\n")
    hw = load_hardware_file(p)
    assert hw.devices["x"].peak("fp32") == 2e12 and hw.links["y"].bytes_per_s == 1e9
    assert hw.topologies["z"].inter_link.name == "ib-hdr"
    assert get_training_device(f"{p}:x").memory_bytes == 4e9
    assert get_link(f"{p}:y").latency_s == 0


@pytest.mark.parametrize("text, line, message", [
    ("devices:\n  - name: x\n    peak_flops: {fp32: 1.0e12}\n    bandwidth: 3\n", 4, "unknown key 'bandwidth'"),
    ("links:\n  - name: y\n    bytes_per_s: -5.0e9\n    latency_s: 0\n", 3, "must be a positive number"),
    ("links:\n  - {name: y, bytes_per_s: 1.0e9, latency_s: 0}\ntopologies:\n  - name: z\n    devices_per_node: 0\n"
     "    intra_link: y\n", 5, "must be a positive number"),
    ("devices: []\n", 1, "zero devices"),
    ("topologies:\n  - {name: z, devices_per_node: 2, intra_link: warp}\n", 2, "unknown link 'warp'"),
])
def test_yaml_errors_name_file_and_line(tmp_path, text, line, message):
    p = _write(tmp_path, text)
    with pytest.raises(HardwareError) as e:
        load_hardware_file(p)
    assert f"{p}:{line}:" in str(e.value) and message in str(e.value)


# --------------------------------------------------------------------------- CLI
def _run(argv, capsys):
    from efficientdl.cli import hw_train

    rc = hw_train.main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("argv, message", [
    (["lenet5", "--device", "warp-drive"], "unknown device"),
    (["lenet5", "--link", "carrier-pigeon"], "unknown link"),
    (["resnet50", "--device", "v100", "--batch", "4096"], "largest batch that fits"),
    (["no-such-model"], "unknown model"),
])
def test_cli_bad_input_one_line_exit_2(argv, message, capsys, tmp_path):
    rc, _, err = _run([*argv, "--no-plots", "-o", str(tmp_path / "o")], capsys)
    assert rc == 2 and err.count("\n") == 1 and message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_cli_no_weighted_layer(capsys, tmp_path):
    p = tmp_path / "w.json"
    p.write_text(json.dumps({"name": "pool-only", "layers": [{"name": "p", "kind": "pool", "input_elements": 4,
                                                               "output_elements": 1}]}))
    rc, _, err = _run([str(p), "-o", str(tmp_path / "o")], capsys)
    assert rc == 2 and "no weighted layer" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_cli_json_and_plots(capsys, tmp_path):
    rc, out, _ = _run(["lenet5", "--device", "a100", "--precision", "tf32", "--batch", "64", "--devices", "4",
                         "--max-devices", "8", "--json", "-o", str(tmp_path / "o"), "--compare-devices", "v100"],
                        capsys)
    assert rc == 0
    d = json.loads(out)
    assert d["workload"]["params"] == 431_080 and d["parallel"]["devices"] == 4
    assert d["fraction_source"].startswith("default")
    assert all((tmp_path / "o" / f).stat().st_size > 0 for f in ("step_breakdown.png", "scaling.png",
                                                                  "training_roofline.png"))


def test_cli_memory_format(capsys, tmp_path):
    times = {}
    for fmt in ("nchw", "nhwc"):
        rc, out, _ = _run(["lenet5", "--device", "v100", "--precision", "mixed", "--batch", "64", "--memory-format",
                           fmt, "--json", "--no-plots", "--compare-devices", ""], capsys)
        assert rc == 0
        d = json.loads(out)["step"]
        assert d["memory_format"] == fmt
        times[fmt] = (d["step_time_s"], d["layout_s"])
    assert times["nhwc"][1] == 0 < times["nchw"][1]
    assert times["nchw"][0] == pytest.approx(times["nhwc"][0] + times["nchw"][1])
    with pytest.raises(SystemExit) as exit_:
        _run(["lenet5", "--memory-format", "chwn", "--no-plots"], capsys)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "invalid choice" in err and err.count("\n") == 1


def test_cli_add_arguments_on_a_subparser():
    from efficientdl.cli import hw_train

    parser = argparse.ArgumentParser(prog="edl")
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("train")
    hw_train.add_arguments(p)
    p.set_defaults(func=hw_train.run)
    args = parser.parse_args(["train", "lenet5", "--calibrate", "1000", "--device", "cpu", "--batch", "8",
                              "--no-plots", "--max-devices", "2", "--devices", "2", "--compare-devices", ""])
    assert args.func is hw_train.run and args.calibrate == 1000


def test_cli_subprocess_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "efficientdl.cli.hw_train", "lenet5", "--device", "nope", "--no-plots"],
                       check=False, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_hardware_training_imports_no_torch_nor_models():
    """ARCHITECTURE.md: hardware/ reads the neutral workload; it never imports torch, compress/ or a model."""
    import ast
    import pathlib

    import efficientdl.hardware.training as pkg

    files = [*pathlib.Path(pkg.__file__).parent.glob("*.py"), pathlib.Path(pkg.__file__).parents[1] / "workload.py"]
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for n in names:
                assert not n.startswith(("torch", "compress", "models", "efficientdl.compress", "efficientdl.models")) \
                    and "compress" not in n and "models" not in n, f"{f.name} imports {n}"


def test_cli_calibrate_reproduces_the_measured_figure(capsys):
    rc, out, _ = _run(["lenet5", "--device", "cpu", "--batch", "64", "--calibrate", "1000", "--devices", "2",
                       "--max-devices", "2", "--compare-devices", "", "--no-plots", "--json"], capsys)
    d = json.loads(out)
    assert rc == 0 and d["fraction_source"].startswith("calibrated on 1000")
    assert d["step"]["samples_per_s"] == pytest.approx(1000, rel=1e-6)
