"""Trainer, evaluation, distillation loss, seeding, checkpoints and parametrized masks."""

import io
import math
import random

import numpy as np

import pytest
import torch
from rich.console import Console
from torch import nn
from torch.nn.utils import parametrize

from efficientdl.data import TensorLoader
from efficientdl.errors import DataError, ModelError, RecipeError
from efficientdl.models import create
from efficientdl.train import (
    Trainer,
    distillation_loss,
    evaluate,
    load_checkpoint,
    plain_state_dict,
    save_checkpoint,
    set_seed,
)


def separable_problem(n: int = 256, seed: int = 0):
    """Two classes split by the line x0 + x1 = 0, with a margin of 0.2."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=generator) * 2 - 1
    x = x[(x[:, 0] + x[:, 1]).abs() > 0.2]
    y = (x[:, 0] + x[:, 1] > 0).long()
    return x, y


def small_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2))


class FixedMask(nn.Module):
    """Parametrization ``W -> W * mask`` with a constant 0/1 mask."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


def test_training_learns_a_separable_problem():
    x, y = separable_problem()
    loader = TensorLoader(x, y, batch_size=32, shuffle=True)
    set_seed(0)
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 1.0], [-1.0, -1.0]]))  # start anti-aligned: accuracy 0
        model.bias.zero_()
    assert (model(x).argmax(1) == y).float().mean() == 0.0
    history = Trainer(loader, loader, epochs=5, lr=0.5, progress=False).fit(model)
    accuracy = float((model(x).argmax(1) == y).float().mean())  # computed here, not by evaluate
    assert accuracy > 0.95
    assert history[-1]["test_accuracy"] == pytest.approx(accuracy)
    assert [record["epoch"] for record in history] == [1, 2, 3, 4, 5]
    assert set(history[0]) == {"epoch", "lr", "train_loss", "train_accuracy", "test_accuracy", "seconds"}
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def train_once(loader_seed: int, trainer_seed: int = 0) -> nn.Module:
    x, y = separable_problem()
    loader = TensorLoader(x, y, batch_size=16, shuffle=True, seed=loader_seed)
    set_seed(123)
    model = small_mlp()
    Trainer(loader, epochs=2, lr=0.1, seed=trainer_seed, progress=False).fit(model)
    return model


def test_same_seed_same_weights():
    first, second = train_once(0), train_once(0)
    for a, b in zip(first.parameters(), second.parameters()):
        assert torch.equal(a, b)
    third = train_once(1)
    assert not all(torch.equal(a, b) for a, b in zip(first.parameters(), third.parameters()))


def _draws():
    return torch.rand(4).tolist(), random.random(), float(np.random.rand())


def test_fit_leaves_the_global_generators_where_they_were():
    """A fit neither reseeds nor consumes the caller's torch / Python / NumPy generators, while
    dropout inside it is still reproducible from the trainer's seed."""
    x, y = separable_problem()
    loader = TensorLoader(x, y, batch_size=32, shuffle=True, seed=0)

    initial = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 2))

    def dropout_mlp():
        model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 2))
        model.load_state_dict(initial.state_dict())
        return model

    trainer = Trainer(loader, epochs=1, lr=0.1, seed=0, progress=False)
    set_seed(123)
    reference = [_draws(), _draws()]                   # the caller's stream without any fit
    set_seed(0)
    fresh = _draws()                                   # what a reseed to the trainer's seed would give
    model_a = dropout_mlp()
    set_seed(123)
    first = _draws()
    trainer.fit(model_a)
    second = _draws()
    assert [first, second] == [reference[0], reference[1]]
    assert second != fresh
    # the same seed gives the same training, whatever the caller's generators hold
    set_seed(999)
    torch.rand(17)
    model_b = dropout_mlp()
    Trainer(loader, epochs=1, lr=0.1, seed=0, progress=False).fit(model_b)
    assert all(torch.equal(a, b) for a, b in zip(model_a.parameters(), model_b.parameters()))
    model_c = dropout_mlp()
    trainer.fit(model_c)                               # the same trainer again: the same result
    assert all(torch.equal(a, c) for a, c in zip(model_a.parameters(), model_c.parameters()))
    model_d = dropout_mlp()
    Trainer(loader, epochs=1, lr=0.1, seed=1, progress=False).fit(model_d)   # dropout follows the seed
    assert not all(torch.equal(a, d) for a, d in zip(model_a.parameters(), model_d.parameters()))


def test_schedules_follow_their_formulas():
    x, y = separable_problem(64)
    loader = TensorLoader(x, y, batch_size=16)
    lrs = {}
    for schedule in ("cosine", "step", "constant"):
        history = Trainer(loader, epochs=4, lr=0.2, schedule=schedule, progress=False).fit(small_mlp())
        lrs[schedule] = [record["lr"] for record in history]
    assert lrs["constant"] == [0.2] * 4
    assert lrs["step"] == pytest.approx([0.2, 0.2, 0.02, 0.002])  # x0.1 at 50 %, x0.01 at 75 %
    assert lrs["cosine"] == pytest.approx([0.2 * 0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4)])


def test_bad_hyperparameters():
    loader = TensorLoader(torch.zeros(2, 2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(RecipeError, match="schedule"):
        Trainer(loader, schedule="linear")
    with pytest.raises(RecipeError, match="lr"):
        Trainer(loader, lr=0)
    with pytest.raises(RecipeError, match="kd_alpha"):
        Trainer(loader, kd_alpha=1.5)
    with pytest.raises(RecipeError, match="optimizer 'adamw'"):
        Trainer(loader, optimizer="adamw")


def test_adam_takes_the_same_steps_as_torch_adam():
    x, y = separable_problem(64)
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    torch.manual_seed(0)
    model = small_mlp()
    reference = small_mlp()
    reference.load_state_dict(model.state_dict())
    Trainer(batches, epochs=2, lr=0.01, weight_decay=1e-3, schedule="constant", optimizer="adam",
            progress=False).fit(model)
    matrices = [p for p in reference.parameters() if p.dim() == 2]      # decay for weight matrices only
    biases = [p for p in reference.parameters() if p.dim() == 1]
    adam = torch.optim.Adam([{"params": matrices, "weight_decay": 1e-3}, {"params": biases, "weight_decay": 0.0}],
                            lr=0.01)
    for _ in range(2):
        for xb, yb in batches:
            adam.zero_grad()
            nn.functional.cross_entropy(reference(xb), yb).backward()
            adam.step()
    for got, want in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(got, want)


def test_divergence_is_a_model_error():
    x, y = separable_problem(64)
    loader = TensorLoader(x * 1e6, y, batch_size=8)
    with pytest.raises(ModelError, match="diverged"):
        Trainer(loader, epochs=3, lr=1e8, progress=False).fit(small_mlp())


def test_evaluate_counts_by_hand():
    class EchoFirstFeature(nn.Module):
        """Predicts class x[:, 0] (one-hot logits)."""

        def forward(self, x):
            return nn.functional.one_hot(x[:, 0].long(), 3).float()

    x = torch.tensor([[0.0], [1.0], [2.0], [2.0], [1.0]])
    y = torch.tensor([0, 1, 1, 2, 0])  # predictions 0 1 2 2 1 -> 3 of 5 right
    model = EchoFirstFeature().train()
    batches = [(x[:2], y[:2]), (x[2:], y[2:])]  # a plain list of batches works too
    assert evaluate(model, batches) == pytest.approx(3 / 5)
    assert model.training  # mode restored
    model.eval()
    evaluate(model, batches)
    assert not model.training
    with pytest.raises(DataError, match="no samples"):
        evaluate(model, [])


def test_distillation_loss_matches_hand_computation():
    student = [[1.0, 2.0, 0.0], [0.5, -1.0, 3.0]]
    teacher = [[0.5, 0.0, 2.0], [2.0, 1.0, -1.0]]
    targets = [1, 2]
    temperature, alpha = 2.0, 0.7

    def softmax(row, t):
        exps = [math.exp(v / t) for v in row]
        return [e / sum(exps) for e in exps]

    kl = ce = 0.0
    for s, t, target in zip(student, teacher, targets):
        p_t, p_s = softmax(t, temperature), softmax(s, temperature)
        kl += sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s))
        ce += -math.log(softmax(s, 1.0)[target])
    expected = alpha * temperature**2 * kl / 2 + (1 - alpha) * ce / 2
    value = distillation_loss(torch.tensor(student), torch.tensor(teacher), torch.tensor(targets), temperature, alpha)
    assert float(value) == pytest.approx(expected, rel=1e-6)


def test_trainer_uses_distillation_with_a_frozen_teacher():
    torch.manual_seed(0)
    x = torch.randn(6, 4)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    student, teacher = nn.Linear(4, 3), nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5))
    teacher.train()
    teacher_before = [p.clone() for p in teacher.parameters()]
    with torch.no_grad():
        s_logits, t_logits = student(x).tolist(), teacher[0](x).tolist()  # teacher in eval mode: no dropout
    temperature, alpha = 3.0, 0.6

    def log_softmax(row, t):
        top = max(v / t for v in row)
        log_sum = top + math.log(sum(math.exp(v / t - top) for v in row))
        return [v / t - log_sum for v in row]

    kl = ce = 0.0
    for s, t, target in zip(s_logits, t_logits, y.tolist()):
        log_t, log_s = log_softmax(t, temperature), log_softmax(s, temperature)
        kl += sum(math.exp(lt) * (lt - ls) for lt, ls in zip(log_t, log_s))
        ce -= log_softmax(s, 1.0)[target]
    expected = alpha * temperature**2 * kl / 6 + (1 - alpha) * ce / 6
    trainer = Trainer(
        TensorLoader(x, y, batch_size=6), epochs=1, lr=0.1, progress=False,
        teacher=teacher, kd_temperature=temperature, kd_alpha=alpha,
    )
    history = trainer.fit(student)
    assert history[0]["train_loss"] == pytest.approx(expected, rel=1e-5)  # loss of the single batch, before the step
    assert teacher.training  # mode restored
    assert all(torch.equal(a, b) for a, b in zip(teacher_before, teacher.parameters()))
    assert all(p.grad is None for p in teacher.parameters())


def test_masked_weights_stay_exactly_zero():
    x, y = separable_problem()
    loader = TensorLoader(x, y, batch_size=16, shuffle=True)
    set_seed(0)
    model = small_mlp()
    mask = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    parametrize.register_parametrization(model[0], "weight", FixedMask(mask))
    before = model[0].weight.detach().clone()
    Trainer(loader, epochs=2, lr=0.1, weight_decay=1e-3, progress=False).fit(model)
    after = model[0].weight.detach()
    assert torch.all(after[mask == 0] == 0)
    assert torch.all(after[mask == 1] != before[mask == 1])  # the kept weights did train
    assert parametrize.is_parametrized(model[0], "weight")


def test_plain_state_dict_folds_parametrizations():
    set_seed(0)
    model = create("lenet300")
    mask = (torch.rand(300, 784) > 0.9).float()
    parametrize.register_parametrization(model.fc1, "weight", FixedMask(mask))
    expected_weight = model.fc1.parametrizations.weight.original.detach() * mask  # by hand
    plain = plain_state_dict(model)
    assert set(plain) == {f"fc{i}.{kind}" for i in (1, 2, 3) for kind in ("weight", "bias")}
    assert torch.equal(plain["fc1.weight"], expected_weight)
    assert torch.equal(plain["fc2.weight"], model.fc2.weight.detach())
    assert all(type(t) is torch.Tensor and not t.requires_grad for t in plain.values())


def test_checkpoint_round_trip(tmp_path):
    set_seed(0)
    model = create("lenet5", num_classes=10)
    mask = (torch.rand(500, 800) > 0.5).float()
    parametrize.register_parametrization(model.fc1, "weight", FixedMask(mask))
    path = tmp_path / "model.pt"
    save_checkpoint(model, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # no temporary left behind
    raw = torch.load(path, weights_only=True)
    assert raw["arch"] == {"name": "lenet5", "kwargs": {"num_classes": 10, "in_channels": 1, "input_size": 28}}
    assert torch.equal(raw["state_dict"]["fc1.weight"], model.fc1.parametrizations.weight.original.detach() * mask)
    assert torch.equal(raw["state_dict"]["conv1.weight"], model.conv1.weight.detach())
    rebuilt = load_checkpoint(path)
    assert not parametrize.is_parametrized(rebuilt)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), model(x), atol=1e-6)


def test_checkpoint_errors(tmp_path):
    with pytest.raises(DataError, match="absent.pt"):
        load_checkpoint(tmp_path / "absent.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(DataError, match="garbage.pt") as info:
        load_checkpoint(garbage)
    assert "\n" not in str(info.value)
    no_arch = tmp_path / "no-arch.pt"
    torch.save({"arch": None, "state_dict": {"w": torch.zeros(1)}}, no_arch)
    with pytest.raises(ModelError, match="no-arch.pt"):
        load_checkpoint(no_arch)
    wrong = tmp_path / "wrong.pt"
    torch.save({"arch": {"name": "lenet300", "kwargs": {}}, "state_dict": {"fc1.weight": torch.zeros(1)}}, wrong)
    with pytest.raises(ModelError, match="wrong.pt"):
        load_checkpoint(wrong)
    with pytest.raises(DataError, match="missing-dir"):
        save_checkpoint(create("lenet300"), tmp_path / "missing-dir" / "m.pt")


def test_progress_output(capsys):
    x, y = separable_problem(64)
    loader = TensorLoader(x, y, batch_size=16)
    Trainer(loader, loader, epochs=2, progress=False).fit(small_mlp())
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    buffer = io.StringIO()
    Trainer(loader, loader, epochs=2, console=Console(file=buffer, width=200)).fit(small_mlp(), description="warmup")
    lines = buffer.getvalue().strip().splitlines()
    assert len(lines) == 2
    assert lines[1].startswith("warmup epoch 2/2") and "test acc" in lines[1]


def test_warmup_ramps_the_scheduled_rate_linearly():
    x, y = separable_problem(64)
    loader = TensorLoader(x, y, batch_size=16)                      # 4 steps per epoch
    steps, epochs, lr0 = len(loader), 3, 0.2
    for schedule in ("constant", "cosine", "step"):
        trainer = Trainer(loader, epochs=epochs, lr=lr0, schedule=schedule, warmup_epochs=1.5, progress=False)
        plain = Trainer(loader, epochs=epochs, lr=lr0, schedule=schedule, progress=False)
        for epoch in range(epochs):
            for step in range(steps):
                k = epoch * steps + step                                # 0-based global step; W = ceil(1.5 * 4) = 6
                ramp = (k + 1) / 6 if k < 6 else 1.0
                expected = plain.learning_rate(lr0, epoch, epochs, step, steps) * ramp
                assert trainer.learning_rate(lr0, epoch, epochs, step, steps) == pytest.approx(expected)
    # the cosine rate at step 2 of epoch 0, written out: lr0 * (1 + cos(pi * 2 / 12)) / 2 * 3 / 6
    warm = Trainer(loader, epochs=epochs, lr=lr0, warmup_epochs=1.5, progress=False)
    assert warm.learning_rate(lr0, 0, 3, 2, 4) == pytest.approx(lr0 * (1 + math.cos(math.pi / 6)) / 2 * 0.5)
    history = warm.fit(small_mlp())
    assert [r["lr"] for r in history] == pytest.approx([lr0 / 6, lr0 * (1 + math.cos(math.pi / 3)) / 2 * 5 / 6,
                                                        lr0 * (1 + math.cos(2 * math.pi / 3)) / 2])


def test_gradient_clipping_bounds_the_step():
    x, y = separable_problem(64)
    x, y = x[:16] * 50, y[:16]                                        # large inputs: a large gradient
    set_seed(0)
    model = small_mlp()
    start = [p.detach().clone() for p in model.parameters()]
    # the gradient and its norm, computed independently of the trainer
    reference = small_mlp()
    reference.load_state_dict(model.state_dict())
    nn.functional.cross_entropy(reference(x), y).backward()
    grads = [p.grad.detach().clone() for p in reference.parameters()]
    norm = math.sqrt(sum(float((g ** 2).sum()) for g in grads))
    clip, lr = 0.5, 0.1
    assert norm > clip
    history = Trainer([(x, y)], epochs=1, lr=lr, momentum=0.0, weight_decay=0.0, schedule="constant",
                      clip_grad_norm=clip, progress=False).fit(model)
    assert history[0]["clipped_steps"] == 1
    for p, p0, g in zip(model.parameters(), start, grads):
        torch.testing.assert_close(p.detach(), p0 - lr * g * (clip / norm))
    moved = math.sqrt(sum(float(((p.detach() - p0) ** 2).sum()) for p, p0 in zip(model.parameters(), start)))
    assert moved == pytest.approx(lr * clip, rel=1e-4)
    # a bound above the norm leaves the step unchanged
    model = small_mlp()
    model.load_state_dict(reference.state_dict())
    history = Trainer([(x, y)], epochs=1, lr=lr, momentum=0.0, weight_decay=0.0, schedule="constant",
                      clip_grad_norm=2 * norm, progress=False).fit(model)
    assert history[0]["clipped_steps"] == 0
    for p, p0, g in zip(model.parameters(), start, grads):
        torch.testing.assert_close(p.detach(), p0 - lr * g)


def test_bad_warmup_and_clipping():
    loader = TensorLoader(torch.zeros(2, 2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(RecipeError, match="warmup_epochs"):
        Trainer(loader, warmup_epochs=-1)
    for bad in (0, -1.0, float("nan"), True):
        with pytest.raises(RecipeError, match="clip_grad_norm"):
            Trainer(loader, clip_grad_norm=bad)
    with pytest.raises(RecipeError, match="mixed"):
        Trainer(loader, clip_grad_norm=1.0, precision="mixed")


class _ZeroGradient(nn.Module):
    """Logits that do not depend on the parameters' values: every parameter gets a zero gradient,
    so one optimiser step shows the weight decay alone."""

    def __init__(self):
        super().__init__()
        from efficientdl.compress import apply_mask, share_layer

        self.fc = nn.Linear(4, 3)
        self.bn = nn.BatchNorm1d(3)
        self.masked = nn.Linear(3, 3)
        self.shared = nn.Linear(3, 2)
        with torch.no_grad():                     # dyadic values: (1 − lr·wd) · w is exact in float32
            for i, p in enumerate(self.parameters()):
                p.copy_((torch.arange(p.numel()).reshape(p.shape) % 7 - 3 + i) / 16)
        apply_mask(self.masked, torch.tensor([[1, 0, 1], [0, 1, 1], [1, 1, 0]], dtype=torch.bool))
        share_layer(self.shared, bits=2)           # 1-D centroids, a frozen stored weight

    def forward(self, x):
        out = self.shared(torch.relu(self.masked(self.bn(self.fc(x)))))
        return out * 0.0 + torch.tensor([2.0, -1.0])


def _decay_step(optimizer):
    model = _ZeroGradient()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    x, y = torch.randn(4, 4), torch.tensor([0, 1, 0, 1])
    Trainer([(x, y)], epochs=1, lr=0.5, momentum=0.0, weight_decay=0.25, schedule="constant",
            optimizer=optimizer, progress=False).fit(model)
    return before, dict(model.named_parameters())


def test_weight_decay_shrinks_only_weight_matrices():
    """nanoGPT's ``configure_optimizers`` rule: L2 decay for parameters with at least two dimensions,
    none for biases, normalisation scales and the centroids of weight sharing (SGD without momentum:
    ``w ← w − lr · (g + λ w)``, here ``g = 0``: ``w ← (1 − lr · λ) w`` = 7/8 · w)."""
    before, after = _decay_step("sgd")
    decayed = {"fc.weight", "masked.parametrizations.weight.original"}
    frozen = {"shared.parametrizations.weight.original"}          # requires_grad False: not optimised
    assert set(before) == decayed | frozen | {"fc.bias", "bn.weight", "bn.bias", "masked.bias", "shared.bias",
                                              "shared.parametrizations.weight.0.centroids"}
    for name, p in after.items():
        expected = before[name] * 0.875 if name in decayed else before[name]
        assert torch.equal(p.detach(), expected), name
    assert torch.count_nonzero(before["fc.weight"]) > 0 and torch.count_nonzero(before["fc.bias"]) > 0


def test_adam_leaves_parameters_without_decay_unchanged():
    before, after = _decay_step("adam")       # zero gradient and no decay: Adam's step is exactly 0
    for name in ("fc.bias", "bn.weight", "bn.bias", "shared.parametrizations.weight.0.centroids"):
        assert torch.equal(after[name].detach(), before[name]), name
    assert not torch.equal(after["fc.weight"].detach(), before["fc.weight"])
