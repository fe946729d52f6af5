"""Knowledge distillation from one or several teachers (Hinton, Vinyals, Dean, 2015).

The student learns from the teachers' soft targets at temperature ``T`` and from the
hard labels: ``L = α · T² · KL(p_teacher^T ‖ p_student^T) + (1 − α) · CE(student, y)``
(:func:`efficientdl.train.distillation_loss`).  Several teachers are averaged in
probability space, as in the paper: :class:`TeacherEnsemble` returns logits ``z`` with
``softmax(z / T) = mean_i softmax(z_i / T)``, so the same loss applies unchanged.
"""

from __future__ import annotations

import torch
from torch import nn


class TeacherEnsemble(nn.Module):
    """Average several teachers' soft targets at temperature ``T``.

    ``forward`` returns ``T · log(mean_i softmax(z_i / T))``: dividing it by ``T`` and
    applying softmax gives exactly the mean of the teachers' softened distributions.

    Args:
        teachers: the teacher models (any classifiers with the same classes).
        temperature: the distillation temperature ``T`` (must match the loss's).
    """

    def __init__(self, teachers: list[nn.Module], temperature: float = 4.0) -> None:
        super().__init__()
        if not teachers:
            raise ValueError("a teacher ensemble needs at least one teacher")
        self.teachers = nn.ModuleList(teachers)
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        probs = torch.stack([torch.softmax(m(x).float() / t, dim=1) for m in self.teachers]).mean(0)
        return t * torch.log(probs.clamp_min(1e-30))
