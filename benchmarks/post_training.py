"""Post-training compression of "pretrained" networks: N unlabeled images, no labels, no retraining.

The networks of :mod:`_pretrained` (MobileNetV2, ResNet-18, a ViT, a 3-layer LSTM,
trained dense once on Fashion-MNIST and cached) are compressed as a user with a
pretrained network would: ``--calibration`` training images (labels dropped), then

(a) pruning by OBS-style reconstruction (SparseGPT), Wanda and magnitude, side by side
    on the same calibration set, at 50/60/70/80% unstructured sparsity and 2:4 — and,
    as the reference that uses labels, magnitude + 1 epoch of retraining;
(b) the target: 50% OBS + 6-bit weight sharing (Hessian-weighted k-means) + Huffman,
    accuracy and the file's real ratio, and the same for every sparsity (the
    ratio-vs-accuracy curve);
(c) Hessian-weighted vs plain k-means at 4 and 5 bits on the dense network: accuracy
    and the mean layer output error;
(a′) with ``--allocation error``, Wanda and magnitude also in their published form (the
    same sparsity in every pruned layer; ``--sections baselines``);
(e) 50% OBS with BatchNorm folded ± bias correction, and kept ± re-estimated
    (MobileNetV2, ResNet-18; ``--sections corrections``);
(d) cost: OBS pruning of ResNet-50's 25.6 M parameters (its real layer shapes, the
    statistics from 32 noise images of 224×224) — seconds and peak memory.

BatchNorm is treated as ``--bn`` says, the same for every method of a network: folded
into the layer before it first (``fold``, the deployment form, so pruning and sharing see
the weights a device runs), or kept and its running statistics re-estimated on the same
unlabeled calibration images after each pruning and sharing step (``reestimate``,
AdaBN; the default for the two CNNs).  ``--allocation error`` (the default for the two
CNNs) spreads each sparsity over the layers by their measured error curves (OBC's
compression database and solver) — for every method alike, so the data-free baselines
then use the calibration data for that choice too; the others prune every layer alike.
Accuracy is on the full 10,000-image test set.
Every figure is measured here; the CPU is recorded with them.  ``--networks`` runs a
subset and merges it into an existing ``--json``.

Usage::

    python benchmarks/post_training.py --json runs/bench/post_training.json
"""

from __future__ import annotations

import argparse
import copy
import json
import pathlib
import resource
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

from efficientdl import data, models, train  # noqa: E402
from efficientdl.compress.calibration import calibration_samples, collect_statistics  # noqa: E402
from efficientdl.compress.fold import fold_batchnorm  # noqa: E402
from efficientdl.compress.pipeline import parameter_bytes_fp32  # noqa: E402
from efficientdl.compress.pruning.post_training import prune_post_training, reconstruction_error  # noqa: E402
from efficientdl.compress.quantization.share import share  # noqa: E402
from efficientdl.core.tensors import compressible_tensors  # noqa: E402
from efficientdl.format.container import encode  # noqa: E402
from efficientdl.report import markdown_table  # noqa: E402
from _machine import cpu_info  # noqa: E402
from _pretrained import NETWORKS, pretrained  # noqa: E402

SPARSITIES = (0.5, 0.6, 0.7, 0.8)
METHODS = ("obs", "wanda", "magnitude")


def log(text: str) -> None:
    print(text, flush=True)


def mean_output_error(model: torch.nn.Module, reference: dict, originals: dict) -> float:
    """Mean over tensors of ``‖(W − Ŵ)X‖_F / ‖W X‖_F`` on the dense model's calibration inputs."""
    errors = [reconstruction_error(originals[t.key], t.value.detach(), reference[t.key])
              for t in compressible_tensors(model) if t.key in reference]
    return sum(errors) / max(len(errors), 1)


def file_ratio(model: torch.nn.Module) -> tuple[int, float]:
    """``(file bytes, fp32 bytes / file bytes)`` of the Huffman-coded file."""
    data_bytes, _ = encode(model, coding="huffman")
    return len(data_bytes), parameter_bytes_fp32(model) / len(data_bytes)


def prunable(name: str, model: torch.nn.Module) -> list[str]:
    """The tensors a grid point prunes.  MobileNetV2: its 1×1 convolutions and the
    classifier (99% of its weights), the depthwise 3×3 and the stem left dense — as Elsen
    et al. (CVPR'20, "Fast Sparse ConvNets") prune MobileNets; every other network: every
    calibrated tensor."""
    keys = []
    for t in compressible_tensors(model):
        m = t.module
        if name == "mobilenetv2" and isinstance(m, torch.nn.Conv2d) and (m.groups > 1 or m.kernel_size != (1, 1)):
            continue
        keys.append(t.key)
    return keys


def target(value, keys: list[str], model: torch.nn.Module, allocation: str = "uniform") -> dict:
    """The prune settings of one grid point on ``keys``: a sparsity (the same on every
    tensor, or with ``allocation="error"`` spread over them by their error curves), or an
    N:M pattern on every tensor whose rows split into groups of M (the others — e.g. a 7×7
    patch embedding of one channel, 49 weights a row — are left dense)."""
    if not isinstance(value, str):
        return {"sparsity": {key: value for key in keys}, "allocation": allocation}
    m = int(value.split(":")[1])
    by_key = {t.key: t for t in compressible_tensors(model)}
    return {"pattern": {key: value for key in keys if by_key[key].value[0].numel() % m == 0}}


def weight_sparsity(model: torch.nn.Module) -> float:
    """Zeros among all the weights of the compressible tensors."""
    tensors = [t.value.detach() for t in compressible_tensors(model)]
    return sum(int((w == 0).sum()) for w in tensors) / sum(w.numel() for w in tensors)


def allocation_mode(name: str, args: argparse.Namespace) -> str:
    """``uniform`` or ``error`` (per-layer sparsities from the layers' error curves, for every
    method alike): ``--allocation`` if given, else ``error`` on the two CNNs, whose small
    early layers lose most at a uniform sparsity, and ``uniform`` elsewhere."""
    if args.allocation:
        return args.allocation
    return "error" if NETWORKS[name][0] in ("mobilenetv2", "resnet18") else "uniform"


def bn_mode(name: str, args: argparse.Namespace) -> str:
    """``fold`` or ``reestimate``: ``--bn`` if given, else ``reestimate`` for the networks
    with BatchNorm (MobileNetV2, ResNet-18) and ``fold`` (a no-op) for the others."""
    if args.bn:
        return args.bn
    return "reestimate" if NETWORKS[name][0] in ("mobilenetv2", "resnet18") else "fold"


def network_runs(name: str, ds, cal: list, args: argparse.Namespace) -> dict:
    """Every measurement of one network (sections a–c)."""
    from efficientdl.compress.correction import reestimate_batchnorm

    dense, _ = pretrained(name, args.cache, log)
    dense.eval()
    bn = bn_mode(name, args)
    fold = fold_batchnorm(dense) if bn == "fold" else {"folded": []}

    def after_compression(model: torch.nn.Module) -> None:
        """The label-free BatchNorm step that follows every pruning and sharing step."""
        if bn == "reestimate":
            reestimate_batchnorm(model, cal)
    accuracy = train.evaluate(dense, ds.test)
    reference = collect_statistics(dense, cal)
    originals = {t.key: t.value.detach().clone() for t in compressible_tensors(dense)}
    log(f"{name}: dense {100 * accuracy:.2f}% ({sum(p.numel() for p in dense.parameters()):,} parameters, "
        f"{len(fold['folded'])} BatchNorm folded, {len(reference)} calibrated tensors)")
    retrain_data = data.load("fashion-mnist", fallback=False, train_subset=args.retrain_subset, seed=1)
    allocation = allocation_mode(name, args)
    keys = [k for k in (prunable(name, dense) if allocation == "uniform" else reference) if k in reference]
    out = {"dense_accuracy": accuracy, "batchnorm": bn, "allocation": allocation, "folded_batchnorm": len(fold["folded"]),
           "prune": [], "pipeline": [],
           "kmeans": [], "pruned_tensors": keys, "left_dense": [t.key for t in compressible_tensors(dense)
                                                                if t.key not in keys]}
    settings = list(SPARSITIES) + ["2:4"]
    obs_models = {}
    for value in settings:
        sequential_too = value in args.sequential_at and (allocation == "uniform" or isinstance(value, str))
        for method in METHODS + (("obs-sequential",) if sequential_too else ()):
            model = copy.deepcopy(dense)
            start = time.perf_counter()
            sequential = method.endswith("sequential")
            _, report = prune_post_training(model, cal, method=method.split("-")[0], sequential=sequential,
                                            statistics=None if sequential else reference,
                                            **target(value, keys, dense, "uniform" if sequential else allocation))
            after_compression(model)
            seconds = time.perf_counter() - start
            row = {"setting": value, "method": method, "accuracy": train.evaluate(model, ds.test),
                   "output_error": mean_output_error(model, reference, originals), "seconds": seconds,
                   "weight_sparsity": weight_sparsity(model), "not_covered": report.settings["not_covered"]}
            out["prune"].append(row)
            log(f"  {name} {value} {method}: {100 * row['accuracy']:.2f}% (error {row['output_error']:.3f}, "
                f"{seconds:.1f} s)")
            if method.startswith("obs"):        # the sequential one replaces the plain one where measured
                obs_models[value] = model
            if method == "magnitude" and value in args.retrain:
                t = train.Trainer(retrain_data.train, ds.test, epochs=1, lr=args.retrain_lr,
                                  optimizer=NETWORKS[name][4], seed=0, progress=False, weight_decay=0.0)
                t.fit(model, description=f"{name} retrain")
                retrained = {"setting": value, "method": "magnitude + 1 epoch retraining (labels)",
                             "accuracy": train.evaluate(model, ds.test),
                             "output_error": mean_output_error(model, reference, originals), "seconds": None}
                out["prune"].append(retrained)
                log(f"  {name} {value} magnitude+retrain: {100 * retrained['accuracy']:.2f}%")
    for value in settings:                       # (b) OBS + 6-bit Hessian-weighted sharing + Huffman
        model = obs_models[value]
        share(model, bits=args.bits, weighting="hessian", statistics=reference)   # the dense layers' inputs
        after_compression(model)
        size, ratio = file_ratio(model)
        row = {"setting": value, "bits": args.bits, "accuracy": train.evaluate(model, ds.test), "file_bytes": size,
               "obs": "sequential" if value in args.sequential_at and "obs-sequential" in
               {x["method"] for x in out["prune"] if x["setting"] == value} else "one pass",
               "ratio": ratio, "output_error": mean_output_error(model, reference, originals)}
        out["pipeline"].append(row)
        log(f"  {name} {value} obs + {args.bits}-bit + Huffman: {100 * row['accuracy']:.2f}%, {ratio:.1f}×")
    for bits in (4, 5):                            # (c) Hessian-weighted vs plain k-means on the dense network
        for weighting in ("none", "hessian"):
            model = copy.deepcopy(dense)
            share(model, bits=bits, weighting=weighting, statistics=reference if weighting == "hessian" else None)
            after_compression(model)
            row = {"bits": bits, "weighting": weighting, "accuracy": train.evaluate(model, ds.test),
                   "output_error": mean_output_error(model, reference, originals)}
            out["kmeans"].append(row)
            log(f"  {name} k-means {bits} bits {weighting}: {100 * row['accuracy']:.2f}% "
                f"(error {row['output_error']:.4f})")
    return out


def uniform_baseline_runs(name: str, ds, cal: list, args: argparse.Namespace) -> list[dict]:
    """(a′) Wanda and magnitude in their published form — the same sparsity in every pruned layer
    (:func:`prunable`'s tensors) — beside the error-allocated rows of a network run with
    ``--allocation error``, with the network's BatchNorm treatment (``--sections baselines``)."""
    from efficientdl.compress.correction import reestimate_batchnorm

    dense, _ = pretrained(name, args.cache, log)
    dense.eval()
    bn = bn_mode(name, args)
    if bn == "fold":
        fold_batchnorm(dense)
    reference = collect_statistics(dense, cal)
    originals = {t.key: t.value.detach().clone() for t in compressible_tensors(dense)}
    keys = [k for k in prunable(name, dense) if k in reference]
    rows = []
    for value in SPARSITIES:
        for method in ("wanda", "magnitude"):
            model = copy.deepcopy(dense)
            prune_post_training(model, cal, method=method, statistics=reference, **target(value, keys, dense))
            if bn == "reestimate":
                reestimate_batchnorm(model, cal)
            row = {"setting": value, "method": f"{method}, uniform", "accuracy": train.evaluate(model, ds.test),
                   "output_error": mean_output_error(model, reference, originals),
                   "weight_sparsity": weight_sparsity(model)}
            rows.append(row)
            log(f"  {name} {value} {method} (uniform): {100 * row['accuracy']:.2f}%")
    return rows


def correction_runs(name: str, ds, cal: list, args: argparse.Namespace) -> list[dict]:
    """(e) OBS at 50% followed by the label-free corrections, side by side on one network:
    BatchNorm folded then bias correction, and BatchNorm kept then re-estimated."""
    from efficientdl.compress.correction import correct_bias, original_weights, reestimate_batchnorm

    rows = []
    for variant in ("fold", "fold + bias correction", "keep BN", "keep BN + re-estimate"):
        model, _ = pretrained(name, args.cache, log)
        model.eval()
        if variant.startswith("fold"):
            fold_batchnorm(model)
        originals = original_weights(model)
        keys = prunable(name, model)
        reference = collect_statistics(model, cal)
        keys = [k for k in keys if k in reference]
        prune_post_training(model, cal, method="obs", statistics=reference, **target(0.5, keys, model))

        def correct() -> None:
            if variant.endswith("bias correction"):
                correct_bias(model, originals, cal)
            if variant.endswith("re-estimate"):
                reestimate_batchnorm(model, cal)

        layers = {n: m for n, m in model.named_modules()
                  if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and m.bias is not None}
        biases = {n: m.bias.detach().clone() for n, m in layers.items()}
        correct()
        row = {"variant": variant, "accuracy": train.evaluate(model, ds.test)}
        with torch.no_grad():            # bias correction measures against the dense layer: start again from its bias
            for n, m in layers.items():
                m.bias.copy_(biases[n])
        share(model, bits=args.bits, weighting="hessian", statistics=reference)
        correct()
        row["shared_accuracy"] = train.evaluate(model, ds.test)
        row["file_bytes"], row["ratio"] = file_ratio(model)
        rows.append(row)
        log(f"  {name} 50% obs, {variant}: {100 * row['accuracy']:.2f}%; + {args.bits}-bit + Huffman "
            f"{100 * row['shared_accuracy']:.2f}% ({row['ratio']:.1f}×)")
    return rows


def obs_cost_resnet50(images: int) -> dict:
    """(d): seconds and peak resident memory of OBS pruning of ResNet-50 (25.6 M parameters)."""
    torch.manual_seed(0)
    model = models.create("resnet50", num_classes=1000, in_channels=3).eval()
    cal = [torch.randn(8, 3, 224, 224) for _ in range(images // 8)]
    start = time.perf_counter()
    _, report = prune_post_training(model, cal, sparsity=0.5, method="obs")
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"parameters": sum(p.numel() for p in model.parameters()), "seconds": seconds, "peak_rss_mib": peak_mib,
            "pruned_tensors": len(report.settings["sparsity"]), "calibration_images": images}


def plot_curves(result: dict, path: pathlib.Path) -> None:
    """The ratio-vs-accuracy curve of every network: OBS at 50–80% + 6-bit sharing + Huffman."""
    from efficientdl.report import plots

    points = {name: [(x["ratio"], x["accuracy"]) for x in r["pipeline"] if not isinstance(x["setting"], str)]
              for name, r in result.get("networks", {}).items()}
    plots.ratio_accuracy(points, path, {name: r["dense_accuracy"] for name, r in result.get("networks", {}).items()},
                         title="post-training OBS 50–80% + 6-bit + Huffman (512 images, no retraining)\n"
                               "(dashed: dense; dotted: dense − 0.5)")


def render(result: dict) -> str:
    text = ""
    for name, r in result.get("networks", {}).items():
        base = r["dense_accuracy"]
        order = [str(v) for v in SPARSITIES] + ["2:4"]           # each setting's rows together
        prune_rows = sorted(r["prune"], key=lambda x: order.index(str(x["setting"])))
        rows = [[str(x["setting"]), x["method"], 100 * x["accuracy"], 100 * (base - x["accuracy"]), x["output_error"],
                 None if x.get("weight_sparsity") is None else 100 * x["weight_sparsity"]] for x in prune_rows]
        treatment = {"fold": "BatchNorm folded", "reestimate": "BatchNorm kept and re-estimated after each step"}
        spread = {"uniform": "the same sparsity in every pruned layer",
                  "error": "sparsity spread over the layers by their error curves"}
        how = treatment[r.get("batchnorm", "fold")] if r.get("batchnorm") == "reestimate" or r.get(
            "folded_batchnorm") else "no BatchNorm"
        text += (f"\n\n### {name} (dense {100 * base:.2f}%; {how}; "
                 f"{spread[r.get('allocation', 'uniform')]}): pruning without retraining\n\n")
        text += markdown_table(rows, ["setting", "method", "accuracy %", "drop (points)", "mean output error",
                                      "zeros % of all weights"])
        rows = [[str(x["setting"]), x["obs"], x["bits"], 100 * x["accuracy"], 100 * (base - x["accuracy"]),
                 x["ratio"], x["file_bytes"]] for x in r["pipeline"]]
        text += "\n\nOBS + Hessian-weighted sharing + Huffman\n\n" + markdown_table(
            rows, ["sparsity", "OBS", "bits", "accuracy %", "drop (points)", "ratio ×", "file bytes"])
        rows = [[x["bits"], x["weighting"], 100 * x["accuracy"], x["output_error"]] for x in r["kmeans"]]
        text += "\n\nk-means on the dense network\n\n" + markdown_table(
            rows, ["bits", "weighting", "accuracy %", "mean output error"])
    for name, rows in result.get("corrections", {}).items():
        text += f"\n\n### {name}: 50% OBS and the label-free corrections\n\n" + markdown_table(
            [[r["variant"], 100 * r["accuracy"], 100 * r["shared_accuracy"], r["ratio"]] for r in rows],
            ["BatchNorm / correction", "50% OBS: accuracy %", "+ 6-bit Hessian sharing + Huffman: accuracy %",
             "ratio ×"])
    if result.get("resnet50_cost"):
        c = result["resnet50_cost"]
        text += (f"\n\nOBS pruning of ResNet-50 ({c['parameters']:,} parameters, {c['pruned_tensors']} tensors, "
                 f"{c['calibration_images']} images): {c['seconds']:.0f} s, peak RSS {c['peak_rss_mib']:.0f} MiB")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument("--calibration", type=int, default=512, help="unlabeled calibration images")
    parser.add_argument("--sequential-at", type=float, nargs="*", default=[0.5],
                        help="sparsities at which OBS also runs with sequential calibration (one pass per layer)")
    parser.add_argument("--bits", type=int, default=6)
    parser.add_argument("--retrain", type=float, nargs="*", default=[0.5],
                        help="sparsities at which magnitude + 1 epoch of retraining is measured")
    parser.add_argument("--retrain-subset", type=int, default=10000,
                        help="labeled images of that one retraining epoch")
    parser.add_argument("--retrain-lr", type=float, default=1e-3)
    parser.add_argument("--cost-images", type=int, default=32, help="images for the ResNet-50 cost run (0: skip)")
    parser.add_argument("--sections", nargs="*", default=["prune", "baselines", "corrections", "cost"],
                        choices=["prune", "baselines", "corrections", "cost"],
                        help="what to measure (none: only render and plot the JSON)")
    parser.add_argument("--allocation", choices=["uniform", "error"], default=None,
                        help="how a sparsity is spread over the layers, for every method (default: error on the "
                             "CNNs, uniform elsewhere)")
    parser.add_argument("--plot", type=pathlib.Path, default=None,
                        help="write the ratio-vs-accuracy curves of every network in the JSON here (a .png)")
    parser.add_argument("--bn", choices=["fold", "reestimate"], default=None,
                        help="BatchNorm treatment for every method (default: reestimate on the CNNs, fold elsewhere)")
    parser.add_argument("--cache", type=pathlib.Path, default=ROOT / "runs" / "bench")
    parser.add_argument("--json", type=pathlib.Path, default=ROOT / "runs" / "bench" / "post_training.json")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    result = {"cpu": cpu_info(), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "calibration_images": args.calibration, "sequential_at": args.sequential_at,
              "retrain_subset": args.retrain_subset, "networks": {}}
    result["cpu"].pop("flags")
    if args.json.exists():                       # a run of some networks updates the others' earlier results
        earlier = json.loads(args.json.read_text())
        for section in ("networks", "corrections"):
            result.setdefault(section, {})
            result[section] = {**earlier.get(section, {}), **result[section]}
        if earlier.get("resnet50_cost") and "cost" not in args.sections:
            result["resnet50_cost"] = earlier["resnet50_cost"]
    for name in args.networks:
        subset = NETWORKS[name][2]
        ds = data.load("fashion-mnist", fallback=False, train_subset=subset, seed=0)
        cal = calibration_samples(ds.train, args.calibration)
        if "prune" in args.sections:
            result["networks"][name] = network_runs(name, ds, cal, args)
        if "baselines" in args.sections and allocation_mode(name, args) == "error" and name in result["networks"]:
            rows = [r for r in result["networks"][name]["prune"] if not r["method"].endswith(", uniform")]
            result["networks"][name]["prune"] = rows + uniform_baseline_runs(name, ds, cal, args)
        if "corrections" in args.sections and NETWORKS[name][0] in ("mobilenetv2", "resnet18"):
            result.setdefault("corrections", {})[name] = correction_runs(name, ds, cal, args)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    if args.cost_images and "cost" in args.sections:
        result["resnet50_cost"] = obs_cost_resnet50(args.cost_images)
        log(f"resnet50 OBS: {result['resnet50_cost']}")
    args.json.write_text(json.dumps(result, indent=1))
    if args.plot:
        plot_curves(result, args.plot)
        log(f"wrote {args.plot}")
    log(render(result))
    log(f"\nCPU: {result['cpu']['model']} ({', '.join(result['cpu']['simd'])}), {result['threads']} threads")


if __name__ == "__main__":
    main()
