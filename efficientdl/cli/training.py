"""``edl train``, ``edl distill``, ``edl sweep`` and ``edl dsd``: algorithms for efficient training."""

from __future__ import annotations

import argparse
import os

from .common import (_epoch_loggers, _float_list, _fraction, _input_file, _int_list, _load_data, _load_model,
                     _nonneg_int, _emit, _output_file, _positive_float, _positive_int, _seed, _trainer,
                     add_common_options, add_training_options, model_help, names)
from .common import _build_model, _data_and_model, _model_name, add_model_options


# --------------------------------------------------------------------------- edl train
def add_train(p: argparse.ArgumentParser) -> None:
    """Options of ``edl train``."""
    p.add_argument("--model", type=_model_name, default="lenet300", help=model_help())
    p.add_argument("-o", "--output", required=True, help="checkpoint to write (.pt)")
    p.add_argument("--nproc-per-node", type=_positive_int, default=1,
                   help="data-parallel processes on this machine (DDP, gloo on CPU; default 1)")
    add_model_options(p, loads_file=False, checkpoint=True)
    add_common_options(p)
    add_training_options(p, 20, 0.05)
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    """``edl train``: train a registry model (one process, spawned data-parallel ones, or under torchrun)."""
    out = _output_file(args.output)
    _epoch_loggers(args)                # --log-dir without tensorboard fails before any work
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1 and "RANK" in os.environ:     # launched by torchrun: one process of the group
        import torch
        import torch.distributed as dist

        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", init_method="env://")
        try:
            _train_process(dist.get_rank(), dist.get_world_size(), args, str(out))
            dist.barrier()
        finally:
            dist.destroy_process_group()
        return 0
    if args.nproc_per_node > 1:
        from ..train.parallel import spawn

        ds = _load_data(argparse.Namespace(**{**vars(args), "json": True}))   # fail on bad data before spawning
        _build_model(args, ds, checkpoint=args.checkpoint)                    # and on a model that cannot be built
        spawn(_train_process, args.nproc_per_node, args, str(out))
        return 0
    _train_process(0, 1, args, str(out))
    return 0


def _train_process(rank: int, world_size: int, args: argparse.Namespace, out: str) -> None:
    """Train on this process's share of every batch (DDP when ``world_size > 1``); rank 0 reports."""
    import torch

    from ..train import evaluate, save_checkpoint
    from ..train.parallel import ShardedLoader

    _seed(args)
    quiet = rank > 0
    if quiet:
        args.no_progress, args.json = True, True
    ds, model = _data_and_model(args, checkpoint=args.checkpoint)
    net = model
    if world_size > 1:
        net = torch.nn.parallel.DistributedDataParallel(model)
        ds.train = ShardedLoader(ds.train, rank, world_size)
    history = _trainer(args, ds, **({} if rank == 0 else {"loggers": []})).fit(net, description=args.model)
    if rank == 0:
        acc = evaluate(model, ds.test)
        save_checkpoint(model, out)
        _emit(args, {"model": args.model, "accuracy": acc, "checkpoint": out, "history": history,
                     "processes": world_size},
              f"{args.model}: test accuracy {100 * acc:.2f}% → {out}"
              + (f" ({world_size} processes, data parallel)" if world_size > 1 else ""))


# --------------------------------------------------------------------------- edl distill
def add_distill(p: argparse.ArgumentParser) -> None:
    """Options of ``edl distill``."""
    from ..train.options import DISTILL_OPTIONS as D

    p.add_argument("--teacher", action="append", required=True,
                   help="teacher checkpoint (.pt) or compressed file (.edlz); repeat to average several")
    p.add_argument("--model", type=_model_name, default="lenet300", help=model_help("student registry name"))
    p.add_argument("-o", "--output", required=True, help="student checkpoint to write (.pt)")
    p.add_argument("--temperature", type=D["kd_temperature"], default=D["kd_temperature"].default,
                   help="softening temperature T (4)")
    p.add_argument("--alpha", type=D["kd_alpha"], default=D["kd_alpha"].default,
                   help="weight of the soft-target term (0.9)")
    p.add_argument("--baseline", action="store_true", help="also train the same student with hard labels only")
    add_model_options(p, loads_file=False, checkpoint=True)
    p.add_argument("--trust-model-code", action="store_true",
                   help="import and run the model code a teacher file names (a file never imports code on its own)")
    add_common_options(p)
    add_training_options(p, 20, 0.05)
    p.set_defaults(func=cmd_distill)


def cmd_distill(args: argparse.Namespace) -> int:
    """``edl distill``: train a student on the soft targets of one or several teachers."""
    import copy

    from ..train import evaluate, save_checkpoint
    from ..train.distill import TeacherEnsemble

    out = _output_file(args.output)
    teachers = [_load_model(_input_file(t), argparse.Namespace(trust_model_code=args.trust_model_code)).eval()
                for t in args.teacher]
    _seed(args)
    ds, student = _data_and_model(args, checkpoint=args.checkpoint)
    teacher = teachers[0] if len(teachers) == 1 else TeacherEnsemble(teachers, args.temperature)
    hard = copy.deepcopy(student)
    result = {"model": args.model, "train_size": ds.train.dataset_size,
              "teacher_accuracy": [evaluate(t, ds.test) for t in teachers]}
    _trainer(args, ds, teacher=teacher, kd_temperature=args.temperature, kd_alpha=args.alpha).fit(
        student, description="distilled student")
    result["student_accuracy"] = evaluate(student, ds.test)
    save_checkpoint(student, out)
    text = (f"teachers: {', '.join(f'{100 * a:.2f}%' for a in result['teacher_accuracy'])}; student on "
            f"{result['train_size']} images with soft targets (T = {args.temperature}, α = {args.alpha}): "
            f"{100 * result['student_accuracy']:.2f}% → {out}")
    if args.baseline:
        _trainer(args, ds).fit(hard, description="hard-label student")
        result["hard_label_accuracy"] = evaluate(hard, ds.test)
        text += f"\nthe same student on the same images with hard labels only: {100 * result['hard_label_accuracy']:.2f}%"
    _emit(args, result, text)
    return 0


# --------------------------------------------------------------------------- edl sweep
def add_sweep(p: argparse.ArgumentParser) -> None:
    """Options of ``edl sweep``."""
    from ..train.options import TRAIN_OPTIONS as T

    p.add_argument("--model", type=_model_name, default="lenet300", help=model_help())
    p.add_argument("--lrs", type=_float_list, default=[0.01, 0.05, 0.1], help="learning rates: 0.01,0.05,0.1")
    p.add_argument("--weight-decays", type=_float_list, default=[5e-4], help="weight decays (5e-4)")
    p.add_argument("--batch-sizes", type=_int_list, default=[128], help="batch sizes (128)")
    p.add_argument("--epochs-list", type=_int_list, default=[3], help="epochs (3)")
    p.add_argument("--jobs", type=_positive_int, help="concurrent runs (default: the cores)")
    p.add_argument("--momentum", type=T["momentum"], default=T["momentum"].default)
    p.add_argument("--schedule", choices=names(T["schedule"].choices), default=T["schedule"].default)
    add_model_options(p, loads_file=False)
    add_common_options(p)
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    """``edl sweep``: train a grid of hyper-parameter configurations concurrently and rank them."""
    from ..report import markdown_table
    from ..train.sweep import grid, sweep

    ds = _load_data(argparse.Namespace(**{**vars(args), "json": True}))   # bad data fails before the pool starts
    _build_model(args, ds)                                                # and so does a model that cannot be built
    fixed = {"model": args.model, "data": args.data, "data_dir": args.data_dir, "momentum": args.momentum,
             "schedule": args.schedule, "seed": args.seed, "train_subset": args.train_subset,
             "test_subset": args.test_subset, "model_kwargs": args.model_kwargs, "image_size": args.image_size,
             "channels": args.channels, "mean": args.mean, "std": args.std}
    configs = [{**fixed, **c} for c in grid(lr=args.lrs, weight_decay=args.weight_decays,
                                              batch_size=args.batch_sizes, epochs=args.epochs_list)]
    results = sweep(configs, args.jobs)
    rows = [[r["lr"], r["weight_decay"], r["batch_size"], r["epochs"], 100 * r["accuracy"]] for r in results]
    text = markdown_table(rows, ["lr", "weight decay", "batch", "epochs", "test accuracy %"])
    best = results[0]
    text += (f"\n\nbest: lr {best['lr']}, weight decay {best['weight_decay']}, batch {best['batch_size']}, "
             f"{best['epochs']} epochs → {100 * best['accuracy']:.2f}% ({len(results)} runs, "
             f"{min(args.jobs or os.cpu_count() or 1, len(results))} at a time)")
    _emit(args, {"runs": results, "best": best}, text)
    return 0


# --------------------------------------------------------------------------- edl dsd
def add_dsd(p: argparse.ArgumentParser) -> None:
    """Options of ``edl dsd``."""
    p.add_argument("--model", type=_model_name, default="lenet300", help=model_help())
    p.add_argument("-o", "--output", required=True, help="checkpoint to write (.pt)")
    p.add_argument("--sparsity", type=_fraction, default=0.5, help="sparse-phase sparsity (default 0.5)")
    p.add_argument("--phase-epochs", type=_nonneg_int, nargs=3, default=[10, 10, 10],
                   metavar=("DENSE", "SPARSE", "REDENSE"))
    p.add_argument("--redense-lr-scale", type=_positive_float, default=0.1, help="re-dense lr = lr × this (0.1)")
    p.add_argument("--baseline", action="store_true", help="also train the dense baseline for the same total epochs")
    add_model_options(p, loads_file=False, checkpoint=True)
    add_common_options(p)
    add_training_options(p, 10, 0.05)
    p.set_defaults(func=cmd_dsd)


def cmd_dsd(args: argparse.Namespace) -> int:
    """``edl dsd``: Dense-Sparse-Dense training, optionally against a dense baseline of as many epochs."""
    import copy

    from ..train import save_checkpoint
    from ..train.dsd import dense_baseline, dsd

    out = _output_file(args.output)
    _seed(args)
    ds, model = _data_and_model(args, checkpoint=args.checkpoint)
    initial = copy.deepcopy(model)
    trainer = _trainer(args, ds)
    result = dsd(model, trainer, args.sparsity, tuple(args.phase_epochs), args.lr, args.redense_lr_scale)
    save_checkpoint(model, out)
    text = (f"{args.model} DSD: dense {100 * result['dense']:.2f}% → sparse ({100 * args.sparsity:.0f}% pruned) "
            f"{100 * result['sparse']:.2f}% → re-dense {100 * result['redense']:.2f}%  → {out}")
    if args.baseline:
        result["baseline"] = dense_baseline(initial, _trainer(args, ds), sum(args.phase_epochs), args.lr)
        text += f"\ndense baseline, {sum(args.phase_epochs)} epochs: {100 * result['baseline']:.2f}%"
    result.pop("history")
    _emit(args, {"model": args.model, "checkpoint": str(out), **result}, text)
    return 0


