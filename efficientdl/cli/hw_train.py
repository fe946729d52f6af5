"""``edl hw train``: how long, how much memory and energy training a model takes on given
hardware — step-time breakdown per layer, memory, data-parallel scaling over interconnects.

The command parses, builds the model's workload (:mod:`efficientdl.train.step_workload`),
calls :func:`efficientdl.hardware.training.analysis.analyse_training` and renders; the
logic lives in ``hardware/training``.  Wired into ``edl`` by the dispatcher::

    p = hw_sub.add_parser("train", help=...); hw_train.add_arguments(p); p.set_defaults(func=hw_train.run)

and runnable alone as ``python -m efficientdl.cli.hw_train``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from ..errors import EdlError
from .common import _input_shape, _json_object, _positive_float, _positive_int

#: one sample's shape and classes for the registry models (others: 1×28×28, 10 classes)
MODEL_INPUTS = {"resnet50": ((3, 224, 224), 1000), "resnet18": ((3, 32, 32), 10), "squeezenet": ((3, 224, 224), 1000)}
HELP = "training time, memory and energy on GPUs/TPUs/CPUs: step breakdown, data-parallel scaling, cost"


class TrainUsageError(EdlError):
    """A bad argument of ``edl hw train``."""


def _names(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``edl hw train`` to ``parser`` (a sub-parser of ``edl hw``)."""
    parser.add_argument("model", nargs="?", default="resnet50",
                        help="registry name (resnet50, resnet18, lenet5, …), your own nn.Module as MODULE:CALLABLE, "
                             "checkpoint (.pt) or a workload JSON file (.json, the layers written by hand); "
                             "default resnet50")
    parser.add_argument("--model-kwargs", type=_json_object, metavar="JSON",
                        help="keyword arguments of a MODULE:CALLABLE model, e.g. '{\"width\": 16}'")
    parser.add_argument("--trust-model-code", action="store_true",
                        help="import and run the model code a checkpoint names (a file never imports code on its own)")
    parser.add_argument("--input-shape", type=_input_shape, help="one sample's shape, e.g. 3,224,224 (default per model)")
    parser.add_argument("--num-classes", type=_positive_int, help="classes of a registry model (default per model)")
    parser.add_argument("--device", default="v100",
                        help="v100, v100-32gb, p100, a100, h100, h200, tpu-v2, knl, cpu, cpu-probe or FILE.yaml[:NAME]")
    parser.add_argument("--batch", type=_positive_int, default=128, help="samples per device (default 128)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "fp16", "bf16", "mixed", "int8"],
                        help="fp32, tf32, fp16/bf16 mixed (fp32 master weights; mixed = fp16), int8")
    parser.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"], help="sgd (momentum) or adam")
    parser.add_argument("--memory-format", default="nchw", choices=["nchw", "nhwc"],
                        help="activation layout: nchw (PyTorch's default; convolutions on tensor cores pay "
                             "layout transposes) or nhwc (torch.channels_last)")
    parser.add_argument("--checkpointing", action="store_true",
                        help="activation checkpointing in sqrt(layers) segments (one extra forward)")
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--calibrate", type=_positive_float, metavar="SAMPLES_PER_S",
                   help="fit the achieved fraction to this measured 1-device throughput (same batch, precision)")
    g.add_argument("--achieved-fraction", type=_positive_float, help="the factor on peak FLOP/s, in (0, 1]")
    d = parser.add_argument_group("data parallel")
    d.add_argument("--devices", type=_positive_int, default=8, help="devices of the configuration (default 8)")
    d.add_argument("--max-devices", type=_positive_int, help="end of the scaling sweep (default max(devices, 64))")
    d.add_argument("--topology", help="dgx1, dgx-a100, dgx-h100, pcie-100gbe or FILE.yaml[:NAME] "
                                      "(default: the device's DGX, else PCIe 4 + 100 GbE)")
    d.add_argument("--link", help="link inside a node (pcie3/4/5, nvlink1-4, …), overriding the topology's")
    d.add_argument("--inter-link", help="link between nodes (10gbe, 25gbe, 100gbe, ib-edr, ib-hdr, ib-ndr, …)")
    d.add_argument("--devices-per-node", type=_positive_int, help="devices in a node (default: the topology's)")
    d.add_argument("--nics-per-node", type=_positive_int, help="inter-node ports per node")
    d.add_argument("--allreduce", default="ring", choices=["ring", "hierarchical", "ps"],
                   help="ring (flat, slowest link), hierarchical (2-D) or ps (parameter server)")
    d.add_argument("--servers", type=_positive_int, default=1, help="parameter servers for --allreduce ps")
    d.add_argument("--bucket-mb", type=_positive_float, default=25.0, help="DDP bucket size in MiB (default 25)")
    d.add_argument("--no-overlap", action="store_true", help="all-reduce after the backward pass, not during it")
    c = parser.add_argument_group("time and energy to train")
    c.add_argument("--epochs", type=_positive_float, default=90.0, help="epochs (default 90)")
    c.add_argument("--dataset-size", type=_positive_int, default=1_281_167,
                   help="samples per epoch (default 1,281,167: ImageNet-1k)")
    c.add_argument("--compare-devices", type=_names, default=("p100", "v100", "a100", "h100"),
                   help="comma-separated devices for the side-by-side cost table")
    parser.add_argument("-o", "--output", default="runs/hw_train", help="output directory for the plots")
    parser.add_argument("--no-plots", action="store_true", help="write no plots")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on standard output")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def _workload(args: argparse.Namespace):
    """The model's :class:`TrainingWorkload`: registry name, checkpoint or workload JSON."""
    from ..hardware.workload import training_workload_from_dict

    src = args.model
    if src.endswith(".json"):
        p = Path(src)
        if not p.is_file():
            raise TrainUsageError(f"{p}: no such file")
        try:
            return training_workload_from_dict(json.loads(p.read_text()))
        except (ValueError, UnicodeDecodeError) as e:
            raise TrainUsageError(f"{p}: not a workload ({str(e).splitlines()[0]})") from None
    from .. import models
    from ..train.step_workload import training_workload

    if src.endswith(".pt"):
        from ..models.user import ModelCodeNeeded
        from ..train import load_checkpoint

        if not Path(src).is_file():
            raise TrainUsageError(f"{src}: no such file")
        try:
            model = load_checkpoint(src, trust_model_code=args.trust_model_code)
        except ModelCodeNeeded as e:
            if e.spec is None:
                raise TrainUsageError(f"{src}: records no architecture; give the model as MODULE:CALLABLE or "
                                      "a registry name instead") from None
            raise TrainUsageError(f"{src}: the model is built by your code {e.spec}, which edl never imports on "
                                  f"its own; pass {e.spec} instead of the file (or --trust-model-code)") from None
        shape = args.input_shape or (1, 28, 28)
        return training_workload(model, shape, Path(src).stem)
    default_shape, default_classes = MODEL_INPUTS.get(src, ((1, 28, 28), 10))
    shape = args.input_shape or default_shape
    model = models.build(src, num_classes=args.num_classes or default_classes, in_channels=shape[0],
                         kwargs=args.model_kwargs,
                         input_size=shape[1] if len(shape) == 3 and shape[1] == shape[2] else None)
    return training_workload(model, shape, src)


def _topology(args: argparse.Namespace, device):
    from dataclasses import replace

    from ..hardware.training import get_link, get_topology
    from ..hardware.training.analysis import default_topology

    topo = get_topology(args.topology) if args.topology else default_topology(device)
    changes = {}
    if args.link:
        changes["intra_link"] = get_link(args.link)
    if args.inter_link:
        changes["inter_link"] = get_link(args.inter_link)
    if args.devices_per_node:
        changes["devices_per_node"] = args.devices_per_node
    if args.nics_per_node:
        changes["nics_per_node"] = args.nics_per_node
    if changes:
        names = [changes[k].name for k in ("intra_link", "inter_link") if k in changes]
        topo = replace(topo, name="+".join([topo.name, *names]), **changes)
    return topo


def run(args: argparse.Namespace) -> int:
    """Handle ``edl hw train``: print the report (or JSON), write the plots; returns 0.

    Raises:
        EdlError: bad input (unknown model, device or link, a batch that does not fit, a
            model with no weighted layer); nothing is written then.
    """
    from ..hardware.training import get_training_device
    from ..hardware.training.analysis import analyse_training
    from ..report.training import render_markdown
    from ..report import dumps

    device = get_training_device(args.device)
    topology = _topology(args, device)
    if args.achieved_fraction is not None and args.achieved_fraction > 1:
        raise TrainUsageError(f"--achieved-fraction must be in (0, 1], got {args.achieved_fraction}")
    workload = _workload(args)
    out = Path(args.output)
    if not args.no_plots and out.exists() and not out.is_dir():
        raise TrainUsageError(f"{out}: exists and is not a directory")
    result = analyse_training(workload, device, args.batch, args.precision, args.optimizer, args.devices, topology,
                              args.allreduce, args.bucket_mb * (1 << 20), not args.no_overlap, args.servers,
                              args.checkpointing, args.achieved_fraction, args.calibrate, args.max_devices,
                              args.epochs, args.dataset_size, args.compare_devices, args.memory_format)
    if not args.no_plots:
        result["plots"] = _plots(result, out)
        from ..report import html
        from ..report.training import report_blocks

        html.write(out / "report.html", html.blocks_report(
            f"Training {result['workload']['name']} on {result['device']['name']}", report_blocks(result),
            [(path, None) for path in result["plots"]]))
    text = render_markdown(result)
    if args.json:
        print(dumps(result))
    else:
        print(text + ("\n\nplots: " + ", ".join(result["plots"]) if result.get("plots") else ""))
    return 0


def _plots(result: dict, out: Path) -> list[str]:
    """The three plots of the report (computed data in; files out, each written whole)."""
    from ..report import training as tp

    out.mkdir(parents=True, exist_ok=True)
    s, dp = result["step"], result["parallel"]
    groups = {g: dict(v) for g, v in s["group_times"].items()}
    groups.setdefault("communication", {})["communication_s"] = dp["exposed_communication_s"]
    name = f"{result['workload']['name']} on {result['device']['name']}, {s['precision']}, batch {s['batch']}"
    paths = [out / "step_breakdown.png", out / "scaling.png", out / "training_roofline.png"]
    tp.step_breakdown(groups, paths[0], f"{name}: step time per layer group ({dp['devices']} devices, "
                                        f"{dp['algorithm']})")
    tp.scaling_curves({k: [(d["devices"], d["samples_per_s"], d["scaling_efficiency"]) for d in v]
                       for k, v in result["scaling"].items()}, paths[1], f"{name}: data-parallel scaling")
    points = []
    for layer in s["layers"]:
        for phase in ("forward", "backward_data", "backward_weight"):
            ph = layer[phase]
            if ph["bytes"] > 0 and ph["time_s"] > 0:
                points.append((layer["name"], ph["flops"] / ph["bytes"], ph["flops"] / ph["time_s"], layer["kind"]))
    from ..hardware.training.step import get_precision

    peak = result["device"]["peak_flops"][get_precision(s["precision"]).compute]
    tp.training_roofline(peak, result["device"]["memory_bandwidth_bytes_per_s"], points, paths[2],
                         f"{name}: training roofline (each layer phase)", peak * result["achieved_fraction"])
    return [str(p) for p in paths]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``edl hw train`` alone (the dispatcher's behaviour: one line and status 2 on bad input)."""

    class _Parser(argparse.ArgumentParser):
        def error(self, message: str) -> None:
            self.exit(2, f"{self.prog}: error: {message}\n")

    parser = _Parser(prog="edl hw train", description=HELP)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except EdlError as e:
        if args.debug:
            raise
        print(f"edl hw train: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
