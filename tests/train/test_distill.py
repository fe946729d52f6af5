"""Teacher ensembles average the softened distributions exactly."""

import pytest
import torch
from torch import nn

from efficientdl.train.distill import TeacherEnsemble


def test_ensemble_averages_soft_targets():
    torch.manual_seed(0)
    teachers = [nn.Linear(5, 4) for _ in range(3)]
    x = torch.randn(6, 5)
    for t in (1.0, 4.0):
        z = TeacherEnsemble(teachers, t)(x)
        expected = torch.stack([torch.softmax(m(x) / t, 1) for m in teachers]).mean(0)
        torch.testing.assert_close(torch.softmax(z / t, 1), expected)
    single = TeacherEnsemble(teachers[:1], 4.0)(x)
    torch.testing.assert_close(torch.softmax(single / 4.0, 1), torch.softmax(teachers[0](x) / 4.0, 1))
    with pytest.raises(ValueError):
        TeacherEnsemble([])


def test_distillation_loss_is_cross_entropy_when_alpha_is_zero():
    from efficientdl.train import distillation_loss

    torch.manual_seed(1)
    s, t, y = torch.randn(5, 4), torch.randn(5, 4), torch.randint(0, 4, (5,))
    torch.testing.assert_close(distillation_loss(s, t, y, temperature=3.0, alpha=0.0),
                               torch.nn.functional.cross_entropy(s, y))
