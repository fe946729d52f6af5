"""Hyper-parameter parallelism: train several configurations at once and keep the best.

The lecture's third form of training parallelism: independent trainings need no
communication, so a grid of configurations runs in a bounded pool of processes (one
thread each, at most one per core), and the results are collected into one table.
"""

from __future__ import annotations

import itertools
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Any


def grid(**axes: list) -> list[dict[str, Any]]:
    """All combinations of the given value lists, e.g. ``grid(lr=[0.01, 0.1], epochs=[2])``."""
    keys = list(axes)
    return [dict(zip(keys, values)) for values in itertools.product(*(axes[k] for k in keys))]


def train_config(config: dict[str, Any]) -> dict[str, Any]:
    """Train one model with one configuration; return the config with its test accuracy.

    ``config`` keys: ``model`` (a registry name or ``MODULE:CALLABLE``), ``data``, ``data_dir``,
    ``epochs``, ``lr``, ``batch_size``, ``weight_decay``, ``momentum``, ``schedule``, ``seed``,
    ``train_subset``, ``test_subset``; optional ``model_kwargs`` and your data's ``image_size``,
    ``channels``, ``mean``, ``std`` (see :func:`efficientdl.data.load`).
    """
    import torch

    from .. import data, models
    from .trainer import Trainer, evaluate, set_seed

    torch.set_num_threads(1)
    set_seed(config["seed"])
    ds = data.load(config["data"], data_dir=config.get("data_dir"), batch_size=config["batch_size"],
                   train_subset=config.get("train_subset"), test_subset=config.get("test_subset"),
                   seed=config["seed"], **{k: config.get(k) for k in ("image_size", "channels", "mean", "std")})
    shape = ds.input_shape
    model = models.build(config["model"], num_classes=ds.num_classes, in_channels=shape[0],
                         kwargs=config.get("model_kwargs"),
                         input_size=shape[1] if len(shape) == 3 and shape[1] == shape[2] else None)
    Trainer(ds.train, ds.test, epochs=config["epochs"], lr=config["lr"], momentum=config["momentum"],
            weight_decay=config["weight_decay"], schedule=config["schedule"], seed=config["seed"],
            progress=False).fit(model)
    return {**config, "accuracy": evaluate(model, ds.test)}


def sweep(configs: list[dict[str, Any]], jobs: int | None = None, run=train_config) -> list[dict[str, Any]]:
    """Run ``run(config)`` for every configuration in a pool of ``jobs`` processes.

    Args:
        configs: the configurations.
        jobs: concurrent processes (default: the machine's cores, at most the number of configs).
        run: a picklable function of one configuration returning a result dict.

    Returns:
        The results, best ``accuracy`` first.
    """
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(configs)))
    if jobs == 1:
        results = [run(c) for c in configs]
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            results = list(pool.map(run, configs))
    return sorted(results, key=lambda r: -r.get("accuracy", float("-inf")))
