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
