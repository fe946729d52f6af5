"""The training-step model against numbers nobody here chose.

(a) Published ResNet-50 v1.5 training throughput (NVIDIA DeepLearningExamples, PyTorch,
    ``../shared/reference/figures.md``): one achieved-fraction factor per device is
    fitted on its 1-GPU fp32 (V100) / TF32 (A100) figure only; the model then predicts
    the mixed-precision 1-GPU figure (factor carried by the documented tensor-core
    ratio, :data:`efficientdl.hardware.training.TENSOR_CORE_RATIO`) and both 8-GPU
    figures (DGX-1: NVLink 2 hybrid cube mesh; DGX A100: NVLink 3 / NVSwitch).
(b) The lecture's "V100 trains ResNet-50 2.4× faster than P100", beside the model's ratio.
(c) Measured here: LeNet-5 (1×28×28) and ResNet-18 (3×32×32) training on this CPU, 1 and
    2 processes (DDP over gloo, one thread each, batch per process fixed), median step
    time after warm-up; the CPU factor is fitted on the 1-process run, the 2-process
    throughput predicted (the loopback link measured by a gloo all-reduce probe).

Usage::

    python benchmarks/training_hardware.py --json runs/bench/training_hardware.json [--plots docs]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch

from efficientdl import models
from efficientdl.hardware.training import (
    TENSOR_CORE_RATIO,
    Link,
    Topology,
    calibrate_fraction,
    carry_fraction,
    data_parallel_step,
    get_topology,
    get_training_device,
    largest_batch,
    probe_cpu,
    training_step,
)
from efficientdl.report import markdown_table
from efficientdl.train.step_workload import training_workload

sys.path.insert(0, str(ROOT / "benchmarks"))
from _machine import cpu_info  # noqa: E402

#: figures.md, "Training throughput, ResNet-50 v1.5" (images/s)
PUBLISHED = {
    ("v100", "fp32"): (367, 2855), ("v100", "fp16"): (1200, 8322),
    ("a100", "tf32"): (938, 7248), ("a100", "fp16"): (2470, 16621),
}
SYSTEMS = {"v100": ("DGX-1, 8× V100 16 GB", "dgx1", "fp32"), "a100": ("DGX A100, 8× A100 80 GB", "dgx-a100", "tf32")}
#: the activation layout of each published run, as the recipe sets it (DeepLearningExamples,
#: PyTorch/Classification/ConvNets/configs.yml: ``memory_format: nhwc`` for AMP only; FP32 and TF32 keep
#: PyTorch's default NCHW, so TF32's tensor-core convolutions run with cuDNN's layout transposes)
MEMORY_FORMAT = {"fp32": "nchw", "tf32": "nchw", "fp16": "nhwc"}


# --------------------------------------------------------------------------- (a) and (b)
def published(plots: pathlib.Path | None) -> dict:
    w = training_workload(models.create("resnet50", num_classes=1000, in_channels=3), (3, 224, 224), "resnet50")
    rows, out = [], {"params": w.params, "macs_per_image": w.macs, "rows": [], "factors": {}}
    for dev_name, (system, topo_name, base) in SYSTEMS.items():
        dev = get_training_device(dev_name)
        topo = get_topology(topo_name)
        fit_batch = min(256, largest_batch(w, dev, base))
        one, _ = PUBLISHED[(dev_name, base)]
        f = calibrate_fraction(w, dev, fit_batch, one, base, memory_format=MEMORY_FORMAT[base])
        out["factors"][dev_name] = {"precision": base, "batch": fit_batch, "achieved_fraction": f,
                                    "memory_format": MEMORY_FORMAT[base]}
        for prec in (base, "fp16"):
            batch = min(256, largest_batch(w, dev, prec))
            fp = carry_fraction(dev, f, base, prec)
            step = training_step(w, dev, batch, prec, "sgd", fp, f"fit on {base} 1-GPU",
                                 memory_format=MEMORY_FORMAT[prec])
            dp = data_parallel_step(step, 8, topo)
            pub1, pub8 = PUBLISHED[(dev_name, prec)]
            label = "mixed" if prec == "fp16" else prec
            for what, model_v, pub_v in (("1 GPU", step.samples_per_s, pub1), ("8 GPUs", dp.samples_per_s, pub8)):
                fitted = prec == base and what == "1 GPU"
                err = model_v / pub_v - 1
                rows.append([system, label, MEMORY_FORMAT[prec], batch, what, pub_v, model_v,
                             "fitted" if fitted else f"{100 * err:+.1f}%",
                             "—" if fitted else ("yes" if abs(err) <= 0.20 else "MISS")])
                out["rows"].append({"system": system, "precision": label, "batch": batch, "figure": what,
                                    "published": pub_v, "model": model_v, "fitted": fitted, "error": err,
                                    "achieved_fraction": fp, "memory_format": MEMORY_FORMAT[prec],
                                    "layout_s": step.layout_s, "step_time_s": step.step_time_s})
            eff_pub = pub8 / (8 * pub1)
            miss = abs(dp.scaling_efficiency - eff_pub)
            rows.append([system, label, MEMORY_FORMAT[prec], batch, "8-GPU scaling efficiency", f"{eff_pub:.3f}",
                         f"{dp.scaling_efficiency:.3f}", f"{dp.scaling_efficiency - eff_pub:+.3f}",
                         "yes" if miss <= 0.05 else "MISS"])
            out["rows"].append({"system": system, "precision": label, "batch": batch, "figure": "efficiency",
                                "published": eff_pub, "model": dp.scaling_efficiency, "error": dp.scaling_efficiency
                                - eff_pub, "communication_s": dp.communication_s,
                                "exposed_communication_s": dp.exposed_communication_s, "step_time_s": dp.step_time_s})
            if plots and prec == "fp16" and dev_name == "v100":
                _plots(w, step, topo, plots)
    out["table"] = markdown_table(rows, ["system", "precision", "layout", "batch / GPU", "figure", "published",
                                         "model", "error", "within target"])
    # (b) V100 vs P100, the lecture's 2.4×: P100 at the V100 fp32 factor (same CUDA-core kind of unit)
    f = out["factors"]["v100"]["achieved_fraction"]
    p100, v100 = get_training_device("p100"), get_training_device("v100")
    ratios = {}
    for label, pv, pp in (("fp32 vs fp32", "fp32", "fp32"), ("mixed (tensor cores) vs fp16", "fp16", "fp16"),
                          ("mixed (tensor cores) vs fp32", "fp16", "fp32")):
        bv, bp = min(256, largest_batch(w, v100, pv)), min(256, largest_batch(w, p100, pp))
        sv = training_step(w, v100, bv, pv, "sgd", carry_fraction(v100, f, "fp32", pv), memory_format=MEMORY_FORMAT[pv])
        sp = training_step(w, p100, bp, pp, "sgd", carry_fraction(p100, f, "fp32", pp), memory_format=MEMORY_FORMAT[pp])
        ratios[label] = {"v100": sv.samples_per_s, "p100": sp.samples_per_s, "ratio": sv.samples_per_s / sp.samples_per_s}
    out["v100_vs_p100"] = {"lecture": 2.4, "model": ratios}
    return out


def _plots(w, step, topo, plots: pathlib.Path) -> None:
    from dataclasses import replace

    from efficientdl.hardware.training import TRAINING_LINKS, scaling
    from efficientdl.report import training as tp

    plots.mkdir(parents=True, exist_ok=True)
    groups = {g: dict(v) for g, v in step.group_times().items()}
    dp = data_parallel_step(step, 8, topo)
    groups["communication"] = {"communication_s": dp.exposed_communication_s}
    tp.step_breakdown(groups, plots / "training_step_resnet50_v100.png",
                      f"ResNet-50 v1.5, V100, mixed, batch {step.batch}: step time per layer group (8 GPUs, ring)")
    series = {}
    for label, t in {"DGX-1 (NVLink 2) + IB EDR ×4": topo,
                     "8× PCIe 3 + 10 GbE": Topology("p", 8, TRAINING_LINKS["pcie3"], TRAINING_LINKS["10gbe"]),
                     "8× PCIe 3 + 100 GbE": Topology("p", 8, TRAINING_LINKS["pcie3"], TRAINING_LINKS["100gbe"]),
                     "1 per node, 10 GbE": Topology("e", 1, TRAINING_LINKS["10gbe"], TRAINING_LINKS["10gbe"]),
                     "1 per node, 10 GbE, param. server": replace(
                         Topology("e", 1, TRAINING_LINKS["10gbe"], TRAINING_LINKS["10gbe"]), name="ps")}.items():
        algo = "ps" if "server" in label else "ring"
        series[label] = [(d.devices, d.samples_per_s, d.scaling_efficiency) for d in scaling(step, 256, t, algo)]
    tp.scaling_curves(series, plots / "training_scaling_resnet50_v100.png",
                      "ResNet-50 v1.5, V100 mixed: model throughput and scaling efficiency")
    dev = get_training_device("v100")
    pts = [(lc.name, ph.flops / ph.bytes, ph.flops / ph.time_s, lc.kind) for lc in step.layers for ph in lc.phases
           if ph.bytes > 0 and ph.time_s > 0]
    tp.training_roofline(dev.peak("fp16"), dev.memory_bandwidth_bytes_per_s, pts,
                         plots / "training_roofline_resnet50_v100.png",
                         "ResNet-50 v1.5 training phases on V100 (fp16 tensor cores)",
                         dev.peak("fp16") * step.achieved_fraction)


# --------------------------------------------------------------------------- (c) measured on this CPU
def _model(name: str):
    return models.create(name, num_classes=10, in_channels=3 if name == "resnet18" else 1)


def _train_steps(model, x, y, steps: int, batch: int, rank: int) -> list[float]:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    times = []
    for s in range(steps):
        lo = (s * batch) % (len(x) - batch + 1)
        xb, yb = x[lo:lo + batch], y[lo:lo + batch]
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return times


def _worker(rank: int, world: int, name: str, shape, batch: int, steps: int, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    torch.manual_seed(0)
    probe = {}
    for size in (1 << 18, 1 << 23):                      # 1 MiB and 32 MiB fp32: the link's α and β
        t = torch.ones(size)
        dist.all_reduce(t)
        ts = []
        for _ in range(5):
            dist.barrier()
            start = time.perf_counter()
            dist.all_reduce(t)
            ts.append(time.perf_counter() - start)
        probe[size * 4] = statistics.median(ts)
    dist.barrier()
    concurrent = torch_probe(repeats=5)                   # this core while the other process computes too
    gathered = [None] * world
    dist.all_gather_object(gathered, concurrent)
    model = torch.nn.parallel.DistributedDataParallel(_model(name))
    g = torch.Generator().manual_seed(rank)
    x, y = torch.randn(batch * 4, *shape, generator=g), torch.randint(0, 10, (batch * 4,), generator=g)
    dist.barrier()
    times = _train_steps(model, x, y, steps, batch, rank)
    if rank == 0:
        torch.save({"times": times, "probe": probe, "concurrent": gathered}, out)


def measure(name: str, shape, batch: int, steps: int, warmup: int) -> dict:
    from efficientdl.train.parallel import spawn

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = _model(name)
    x, y = torch.randn(batch * 4, *shape), torch.randint(0, 10, (batch * 4,))
    one = _train_steps(model, x, y, steps, batch, 0)[warmup:]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "r.pt")
        spawn(_worker, 2, name, shape, batch, steps, out)
        r = torch.load(out, weights_only=True)
    two = r["times"][warmup:]
    (s1, t1), (s2, t2) = sorted(r["probe"].items())
    beta = (s2 - s1) / (t2 - t1)                           # N = 2: t = 2α + G/β
    alpha = max(0.0, (t1 - s1 / beta) / 2)
    return {"model": name, "input_shape": list(shape), "batch_per_process": batch, "steps": steps, "warmup": warmup,
            "step_s_1": statistics.median(one), "step_s_2": statistics.median(two),
            "samples_per_s_1": batch / statistics.median(one), "samples_per_s_2": 2 * batch / statistics.median(two),
            "concurrent_probe": r["concurrent"], "loopback_bytes_per_s": beta, "loopback_latency_s": alpha, "allreduce_probe_s": r["probe"]}


def torch_probe(n: int = 1024, copy_bytes: int = 1 << 28, repeats: int = 7) -> dict:
    """This core with the library that trains: 1-thread torch fp32 matmul FLOP/s and copy bandwidth (medians)."""
    torch.set_num_threads(1)
    a = torch.randn(n, n)
    a @ a
    flops = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ a
        flops.append(2 * n ** 3 / (time.perf_counter() - start))
    src, dst = torch.ones(copy_bytes // 4), torch.empty(copy_bytes // 4)
    dst.copy_(src)
    bw = []
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        bw.append(2 * copy_bytes / (time.perf_counter() - start))
    return {"fp32_flops_per_s": statistics.median(flops), "memory_bandwidth_bytes_per_s": statistics.median(bw)}


def cpu_runs(cases) -> dict:
    from efficientdl.hardware.training import TrainingDevice

    base = get_training_device("cpu")
    numpy_probe = probe_cpu()
    rows, results = [], []
    for name, shape, batch, steps, warmup in cases:
        probe = torch_probe()                             # just before this model's 1-process run
        cpu = TrainingDevice("cpu-probe", base.description, "1-thread torch matmul and copy probe in this run",
                             {"fp32": probe["fp32_flops_per_s"]}, probe["memory_bandwidth_bytes_per_s"],
                             base.memory_bytes, base.tdp_w)
        m = measure(name, shape, batch, steps, warmup)
        w = training_workload(_model(name), shape, name)
        f = calibrate_fraction(w, cpu, batch, m["samples_per_s_1"])
        step = training_step(w, cpu, batch, "fp32", "sgd", f, "fit on 1 process")
        link = Link("loopback-measured", m["loopback_bytes_per_s"], m["loopback_latency_s"], "gloo probe")
        dp = data_parallel_step(step, 2, Topology("loopback", 2, link))
        # the same device measured while both processes run (the probe in both at once): the slower core
        slow = min(m["concurrent_probe"], key=lambda c: c["fp32_flops_per_s"])
        shared = TrainingDevice("cpu-probe-2", base.description, "probe in 2 processes at once",
                                {"fp32": slow["fp32_flops_per_s"]}, slow["memory_bandwidth_bytes_per_s"],
                                base.memory_bytes, base.tdp_w)
        dp_shared = data_parallel_step(training_step(w, shared, batch, "fp32", "sgd", f, "fit on 1 process"), 2,
                                       Topology("loopback", 2, link))
        err = dp.samples_per_s / m["samples_per_s_2"] - 1
        err_shared = dp_shared.samples_per_s / m["samples_per_s_2"] - 1
        m.update({"achieved_fraction": f, "predicted_samples_per_s_2": dp.samples_per_s, "error_2": err,
                  "predicted_samples_per_s_2_concurrent_probe": dp_shared.samples_per_s,
                  "error_2_concurrent_probe": err_shared, "predicted_communication_s": dp.communication_s,
                  "probe_alone": probe})
        results.append(m)
        rows.append([name, batch, m["samples_per_s_1"], f"{f:.3f}", m["samples_per_s_2"], dp.samples_per_s,
                     f"{100 * err:+.1f}%", dp_shared.samples_per_s, f"{100 * err_shared:+.1f}%",
                     "yes" if abs(err_shared) <= 0.25 else "MISS"])
    table = markdown_table(rows, ["model", "batch / process", "measured 1 proc (fitted)", "factor",
                                  "measured 2 procs", "predicted 2 (probe alone)", "error",
                                  "predicted 2 (probe in 2 procs)", "error", "within 25%"])
    return {"probe": probe, "numpy_probe": numpy_probe, "runs": results, "table": table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=pathlib.Path, default=ROOT / "runs" / "bench" / "training_hardware.json")
    parser.add_argument("--plots", type=pathlib.Path, default=None, help="directory for the plots (e.g. docs)")
    parser.add_argument("--skip-cpu", action="store_true", help="only the published-figure checks")
    parser.add_argument("--lenet-steps", type=int, default=40)
    parser.add_argument("--resnet18-steps", type=int, default=10)
    args = parser.parse_args()
    result = {"cpu": cpu_info(), "torch": torch.__version__, "tensor_core_ratio": TENSOR_CORE_RATIO}
    pub = published(args.plots)
    result["published"] = pub
    print("## ResNet-50 v1.5 training throughput, model vs published (images/s)\n")
    print(pub["table"])
    print("\nfactors fitted:", json.dumps(pub["factors"]))
    print("\n## V100 vs P100 (lecture: 2.4×)\n")
    print(markdown_table([[k, v["v100"], v["p100"], f"{v['ratio']:.2f}×"] for k, v in pub["v100_vs_p100"]["model"].items()],
                         ["comparison", "V100 img/s", "P100 img/s", "model ratio"]))
    if not args.skip_cpu:
        cases = [("lenet5", (1, 28, 28), 64, args.lenet_steps, 5), ("resnet18", (3, 32, 32), 32, args.resnet18_steps, 2)]
        cpu = cpu_runs(cases)
        result["measured_cpu"] = cpu
        print(f"\n## Measured on this CPU ({result['cpu']['model']}, {result['cpu']['cores']} cores), samples/s\n")
        print(cpu["table"])
        print(f"\nprobe: {cpu['probe']['fp32_flops_per_s'] / 1e9:.1f} GFLOP/s (1-thread fp32 matmul), "
              f"{cpu['probe']['memory_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s (copy)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=str))
    print(f"\nJSON: {args.json}")


if __name__ == "__main__":
    main()
