"""The LSTM classifier: parameters counted by hand, row-by-row reading, argument checks,
training, rebuilding from ``edl_arch``, and the pruned + weight-shared model through the file."""

import pytest
import torch

from efficientdl import format as fmt
from efficientdl import models, train
from efficientdl.compress.layers import compressible_tensors
from efficientdl.compress.pruning.prune import prune_once
from efficientdl.compress.quantization.share import share
from efficientdl.errors import ModelError
from efficientdl.models.rnn import LSTMClassifier


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny recurrent steps: two threads on a shared two-core machine are far slower
    yield
    torch.set_num_threads(threads)


def count(module):
    return sum(p.numel() for p in module.parameters())


def test_parameter_count_is_the_gate_formula():
    model = models.create("lstm")
    i, h, k = 28, 128, 10
    # four gates: an (h x i) input matrix, an (h x h) recurrent matrix and two h-bias vectors each
    lstm = 4 * h * i + 4 * h * h + 4 * h + 4 * h
    assert lstm == 4 * h * (i + h) + 8 * h == 80_896
    assert count(model.lstm) == lstm
    assert count(model.fc) == h * k + k == 1_290
    assert count(model) == 82_186
    assert tuple(model.lstm.weight_ih_l0.shape) == (4 * h, i)
    assert tuple(model.lstm.weight_hh_l0.shape) == (4 * h, h)


def test_two_layers_and_channels_count_by_hand():
    model = models.create("lstm", in_channels=3, hidden_size=16, num_layers=2, num_classes=5)
    i, h = 3 * 28, 16
    first = 4 * h * (i + h) + 8 * h
    second = 4 * h * (h + h) + 8 * h
    assert count(model) == first + second + (h * 5 + 5)
    assert [t.key for t in compressible_tensors(model)] == [
        "lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.weight_ih_l1", "lstm.weight_hh_l1", "fc"]


def test_output_shape_and_row_by_row_reading():
    torch.manual_seed(0)
    model = models.create("lstm", in_channels=2, hidden_size=8, num_classes=7).eval()
    x = torch.randn(3, 2, 28, 28)
    assert model(x).shape == (3, 7)
    # the same computation by hand: time step t holds row t of channel 0, then of channel 1
    sequence = torch.cat([x[:, 0], x[:, 1]], dim=2)                   # 3 x 28 x 56
    outputs, _ = model.lstm(sequence)
    torch.testing.assert_close(model(x), model.fc(outputs[:, -1]))
    assert model(torch.randn(2, 2, 5, 28)).shape == (2, 7)           # any number of rows


def test_forget_gate_bias_starts_at_one():
    model = models.create("lstm", hidden_size=4)
    bias = model.lstm.bias_ih_l0 + model.lstm.bias_hh_l0
    assert torch.equal(bias[4:8], torch.ones(4))


@pytest.mark.parametrize("kwargs, fragment", [
    ({"hidden_size": 0}, "hidden_size"), ({"num_layers": 1.5}, "num_layers"), ({"input_size": True}, "input_size"),
    ({"num_classes": -1}, "num_classes"), ({"in_channels": "1"}, "in_channels"), ({"dropout": 0.1}, "lstm"),
])
def test_bad_arguments_are_model_errors(kwargs, fragment):
    with pytest.raises(ModelError, match=fragment):
        models.create("lstm", **kwargs)


def test_an_input_of_another_shape_is_refused():
    model = models.create("lstm", hidden_size=4)
    with pytest.raises(ModelError, match=r"N x 1 x rows x 28"):
        model(torch.randn(2, 784))
    with pytest.raises(ModelError, match="lstm"):
        model(torch.randn(2, 3, 28, 28))


def test_one_training_step_runs():
    torch.manual_seed(0)
    model = models.create("lstm", hidden_size=8)
    before = model.lstm.weight_hh_l0.detach().clone()
    batches = [(torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,)))]
    history = train.Trainer(batches, epochs=1, lr=0.1, clip_grad_norm=1.0, progress=False).fit(model)
    assert len(history) == 1 and history[0]["train_loss"] > 0
    assert not torch.equal(before, model.lstm.weight_hh_l0)


def test_edl_arch_rebuilds_an_identical_model():
    model = models.create("lstm", hidden_size=32, num_layers=2, num_classes=4)
    assert model.edl_arch == {"name": "lstm", "kwargs": {"num_classes": 4, "in_channels": 1, "input_size": 28,
                                                         "hidden_size": 32, "num_layers": 2}}
    rebuilt = models.rebuild(model.edl_arch)
    assert isinstance(rebuilt, LSTMClassifier)
    assert [(n, p.shape) for n, p in rebuilt.named_parameters()] == [(n, p.shape) for n, p in model.named_parameters()]


def test_pruned_and_shared_model_survives_the_file(tmp_path):
    torch.manual_seed(0)
    model = models.create("lstm", hidden_size=16)
    prune_once(model, sparsity={"lstm.*": 0.9, "fc": 0.5})
    share(model, bits={"LSTM": 4, "Linear": 5})
    for t in compressible_tensors(model):
        v = t.value.detach()
        assert torch.unique(v[v != 0]).numel() <= (15 if t.key.startswith("lstm") else 31), t.key
    assert float((model.lstm.weight_hh_l0 == 0).float().mean()) == pytest.approx(0.9, abs=0.01)
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        expected = model.eval()(x)
    path = tmp_path / "lstm.edlz"
    fmt.save(model, path)
    loaded = fmt.load(path)                                  # the architecture comes from the file
    assert isinstance(loaded, LSTMClassifier)
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
