"""Hyper-parameter sweeps: the grid, the pool, and the ranking."""

import os

from efficientdl.train.sweep import grid, sweep


def score(config):
    return {**config, "accuracy": -abs(config["lr"] - 0.05) - config["wd"], "pid": os.getpid()}


def test_grid_is_the_product():
    g = grid(lr=[0.01, 0.1], wd=[0, 1e-4], epochs=[3])
    assert len(g) == 4 and {"lr": 0.1, "wd": 1e-4, "epochs": 3} in g


def test_sweep_runs_in_a_pool_and_ranks_the_best_first():
    configs = grid(lr=[0.01, 0.05, 0.1, 0.2], wd=[0.0, 0.001])
    results = sweep(configs, jobs=2, run=score)
    assert [(r["lr"], r["wd"]) for r in results][0] == (0.05, 0.0)
    assert len(results) == 8 and os.getpid() not in {r["pid"] for r in results}   # ran in worker processes
    assert sweep(configs[:1], jobs=4, run=score)[0]["pid"] == os.getpid()         # one config: no pool
