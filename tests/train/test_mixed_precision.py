"""Mixed precision: master weights get the exact fp32 update of the unscaled gradient,
overflowing steps are skipped and halve the scale, and the underflow diagnostic by hand."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from efficientdl.train.mixed_precision import LossScaler, MixedPrecisionOptimizer, amp_step, gradient_underflow


def test_master_update_equals_fp32_sgd_on_the_fp16_gradient():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    reference = nn.Linear(4, 3)
    reference.load_state_dict(model.state_dict())
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    mp = MixedPrecisionOptimizer(model, lambda ps: torch.optim.SGD(ps, lr=0.1), LossScaler(scale=1024.0, dynamic=False))
    assert model.weight.dtype == torch.float16 and mp.master[0].dtype == torch.float32
    # reference: the fp16 model's gradient, unscaled, applied in fp32
    half = nn.Linear(4, 3).half()
    half.load_state_dict({k: v.half() for k, v in reference.state_dict().items()})
    (F.cross_entropy(half(x.half()).float(), y) * 1024.0).backward()
    expected = reference.weight.detach() - 0.1 * (half.weight.grad.float() / 1024.0)
    mp.step(lambda: F.cross_entropy(model(x.half()).float(), y))
    torch.testing.assert_close(mp.master[0].detach(), expected)
    torch.testing.assert_close(model.weight.float(), expected.half().float())
    assert mp.scaler.skipped == 0


def test_overflow_skips_the_step_and_halves_the_scale():
    model = nn.Linear(2, 1)
    mp = MixedPrecisionOptimizer(model, lambda ps: torch.optim.SGD(ps, lr=0.1), LossScaler(scale=2.0 ** 15))
    before = [m.detach().clone() for m in mp.master]
    mp.step(lambda: (model(torch.full((1, 2), 60000.0).half()).float() * 1e4).sum())   # inf gradients in fp16
    assert mp.scaler.skipped == 1 and mp.scaler.scale == 2.0 ** 14
    assert all(torch.equal(a, b) for a, b in zip(before, mp.master))


def test_dynamic_scale_grows_after_clean_steps():
    s = LossScaler(scale=8.0, growth_interval=3)
    for overflow in (False, False, False, True, False):
        s.update(overflow)
    assert s.history == [8.0, 8.0, 16.0, 8.0, 8.0] and s.skipped == 1
    static = LossScaler(scale=1000.0, dynamic=False)
    static.update(True)
    assert static.scale == 1000.0 and static.skipped == 1


def test_underflow_diagnostic_by_hand():
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    x = torch.tensor([[2.0 ** -30]])
    d = gradient_underflow(model, model(x).sum(), scales=(1.0, 2.0 ** 10))   # the gradient is x = 2^-30
    assert d["scales"][1.0]["underflow"] == 1.0 and d["scales"][2.0 ** 10]["underflow"] == 0.0
    assert d["log2_magnitudes"] == [-30.0]


def test_amp_bf16_step_on_cpu():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.weight.detach().clone()
    loss = amp_step(model, opt, lambda: F.cross_entropy(model(torch.randn(8, 4)), torch.randint(0, 3, (8,))),
                    torch.bfloat16)
    assert loss > 0 and not torch.equal(before, model.weight.detach())


@pytest.mark.parametrize("precision", ["mixed", "bf16", "fp16"])
def test_trainer_precisions_train_and_return_fp32(precision):
    from efficientdl.data import TensorLoader
    from efficientdl.train import Trainer, evaluate

    torch.manual_seed(0)
    x = torch.randn(512, 10)
    y = (x[:, :3].sum(1) > 0).long()
    loader = TensorLoader(x, y, batch_size=64, shuffle=True, seed=0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))
    history = Trainer(loader, loader, epochs=4, lr=0.1, seed=0, progress=False, precision=precision).fit(model)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert evaluate(model, loader) > 0.85
    if precision == "mixed":
        # 4 epochs × 8 steps, gradients ≪ 65504 / 2^15 = 2: no step overflows, and 32 clean steps are
        # fewer than the 2000 after which the scale would grow
        assert [(r["skipped_steps"], r["loss_scale"]) for r in history] == [(0, 2.0 ** 15)] * 4


def test_trainer_skips_the_overflowing_step_and_halves_the_scale(monkeypatch):
    """A loss scale of 2^40 makes the first backward overflow fp16 (any gradient above 2^-24·65504 does):
    the trainer reports exactly one skipped step, the scale halved, and the weights untouched."""
    import functools

    from efficientdl.train import Trainer, mixed_precision

    monkeypatch.setattr(mixed_precision, "LossScaler", functools.partial(LossScaler, scale=2.0 ** 40))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 2))
    before = [p.detach().clone() for p in model.parameters()]
    x, y = torch.randn(16, 10), torch.randint(0, 2, (16,))
    history = Trainer([(x, y)], epochs=1, lr=0.1, seed=0, progress=False, precision="mixed").fit(model)
    assert history[0]["skipped_steps"] == 1 and history[0]["loss_scale"] == 2.0 ** 39
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))


def test_unknown_precision_is_refused():
    from efficientdl.errors import RecipeError
    from efficientdl.train import Trainer

    with pytest.raises(RecipeError, match="precision"):
        Trainer([], precision="fp8")
