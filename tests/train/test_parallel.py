"""Data parallel: two gloo processes reach the weights of one process on the whole batch."""

import torch
from torch import nn

from efficientdl.train.parallel import data_parallel_train


def small_mlp():
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))


def test_two_processes_match_one():
    torch.manual_seed(0)
    x = torch.randn(256, 12)
    y = torch.randint(0, 3, (256,))
    one = data_parallel_train(small_mlp, x, y, global_batch=32, steps=5, lr=0.1, world_size=1)
    two = data_parallel_train(small_mlp, x, y, global_batch=32, steps=5, lr=0.1, world_size=2)
    assert set(one) == set(two)
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-5, atol=1e-6)
    torch.manual_seed(0)
    assert not torch.equal(one["0.weight"], small_mlp().state_dict()["0.weight"])   # it did train


def _model_parallel_worker(rank, world_size):
    from efficientdl.train.parallel import OutputChannelParallelConv2d, RowParallelLinear, pipeline_forward

    torch.manual_seed(0)                                   # every process builds the same full layers
    fc, conv = nn.Linear(10, 8), nn.Conv2d(3, 6, 3, padding=1)
    x, img = torch.randn(4, 10), torch.randn(2, 3, 7, 7)
    with torch.no_grad():
        torch.testing.assert_close(RowParallelLinear(fc, rank, world_size)(x), fc(x))
        torch.testing.assert_close(OutputChannelParallelConv2d(conv, rank, world_size)(img), conv(img))
    net = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))
    stages = [net[:2], net[2:]]
    out = pipeline_forward(stages[rank], x if rank == 0 else None, rank, world_size)
    if rank == world_size - 1:
        with torch.no_grad():
            torch.testing.assert_close(out, net(x))
    else:
        assert out is None


def test_model_parallel_layers_and_pipeline_equal_the_single_process_network():
    from efficientdl.train.parallel import spawn

    spawn(_model_parallel_worker, 2)


def test_parameter_server_applies_every_worker_update_asynchronously():
    from efficientdl.train.parallel import parameter_server_train

    torch.manual_seed(0)
    x = torch.randn(300, 12)
    y = (x[:, :3].sum(1) > 0).long() + (x[:, 3] > 1).long()
    state, stats = parameter_server_train(small_mlp, x, y, workers=2, steps=40, lr=0.2, batch=32)
    assert stats["updates"] == 80 and len(stats["staleness"]) == 80
    assert min(stats["staleness"]) >= 0 and stats["max_staleness"] <= 80
    model = small_mlp()
    before = nn.functional.cross_entropy(model(x), y).item()
    model.load_state_dict(state)
    assert nn.functional.cross_entropy(model(x), y).item() < before          # the pushed updates trained it


def _failing_worker(rank, world_size):
    if rank == 1:
        raise RuntimeError("boom in rank 1")
    import torch.distributed as dist

    dist.barrier()                                          # would wait forever for the dead peer


def _dying_worker(rank, world_size):
    import os

    if rank == 1:
        os._exit(3)


def test_a_failing_or_dying_process_stops_the_run_with_a_clear_error():
    import pytest

    from efficientdl.train.parallel import TrainingError, spawn

    with pytest.raises(TrainingError, match="training process failed"):   # the first process to fail reports
        spawn(_failing_worker, 2)
    with pytest.raises(TrainingError, match="died"):
        spawn(_dying_worker, 2)


def test_timing_is_reported():
    torch.manual_seed(0)
    x, y = torch.randn(64, 12), torch.randint(0, 3, (64,))
    timing = {}
    data_parallel_train(small_mlp, x, y, global_batch=16, steps=2, lr=0.1, world_size=2, timing=timing)
    assert timing["seconds"] > 0
