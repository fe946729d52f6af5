"""The training settings, declared once with their ranges.

:class:`efficientdl.train.Trainer` checks its arguments with these, the recipe
validator checks every stage's training keys (``dense``, ``prune``, ``quantize``)
against them, and the command line uses them as argument types, so the three accept
exactly the same values.
"""

from __future__ import annotations

from ..core.options import Option

SCHEDULES = ("cosine", "step", "constant")
PRECISIONS = ("fp32", "mixed", "bf16", "fp16")
OPTIMIZERS = ("sgd", "adam")

#: the (re)training settings a recipe stage and the command line take
TRAIN_OPTIONS: dict[str, Option] = {o.name: o for o in (
    Option("epochs", int, None, 0, 10_000, help="training epochs"),
    Option("lr", float, None, 0, None, low_open=True, help="base learning rate"),
    Option("momentum", float, 0.9, 0, 1, high_open=True, help="SGD momentum"),
    Option("weight_decay", float, None, 0, 1, help="L2 penalty of the weight matrices"),
    Option("warmup_epochs", float, 0.0, 0, 10_000, help="linear learning-rate warmup, in epochs"),
    Option("clip_grad_norm", float, None, 0, 1e6, low_open=True, help="largest global gradient L2 norm"),
    Option("optimizer", str, "sgd", choices=OPTIMIZERS, help="sgd (with momentum) or adam"),
    Option("schedule", str, "cosine", choices=SCHEDULES, help="learning-rate schedule"),
)}

#: settings only the Python API and the distillation commands take
DISTILL_OPTIONS: dict[str, Option] = {o.name: o for o in (
    Option("kd_temperature", float, 4.0, 0, None, low_open=True, help="distillation temperature T"),
    Option("kd_alpha", float, 0.9, 0, 1, help="weight of the soft-target term"),
)}

PRECISION = Option("precision", str, "fp32", choices=PRECISIONS, help="arithmetic of training")
