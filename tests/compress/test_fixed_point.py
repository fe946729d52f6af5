"""Dynamic fixed point and affine quantization: checked against torch's reference
quantizers, hand-worked radix points, integer arithmetic and the file round trip."""

import json
import zlib

import pytest
import torch
from torch import nn

from efficientdl import format as fmt, models
from efficientdl.compress.quantization.fixed_point import (QuantSpec, affine_activation_spec, affine_weight_spec, fake_quantize,
                                              fixed_point_spec, freeze, integer_codes, integer_weights,
                                              input_spec, quantize_linear)
from efficientdl.errors import FormatError, RecipeError


def _batches(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 1, 28, 28, generator=g), torch.zeros(8, dtype=torch.long)) for _ in range(n)]


def test_per_tensor_fake_quant_matches_torch_reference():
    x = torch.randn(1000) * 3
    spec = affine_activation_spec(float(x.min()), float(x.max()), 8)
    ref = torch.fake_quantize_per_tensor_affine(x, spec.scale[0], spec.zero_point[0], spec.qmin, spec.qmax)
    assert torch.allclose(fake_quantize(x, spec), ref, atol=1e-6, rtol=0)


def test_per_channel_fake_quant_matches_torch_reference():
    w = torch.randn(6, 4, 3, 3)
    spec = affine_weight_spec(w, 8, per_channel=True)
    ref = torch.fake_quantize_per_channel_affine(w, torch.tensor(spec.scale), torch.zeros(6, dtype=torch.int32),
                                                 0, spec.qmin, spec.qmax)
    assert torch.allclose(fake_quantize(w, spec), ref, atol=1e-6, rtol=0)
    # the largest magnitude of each channel is representable exactly (symmetric scale)
    peak = w.abs().flatten(1).amax(1)
    assert torch.allclose(fake_quantize(w, spec).abs().flatten(1).amax(1), peak, rtol=1e-6)


@pytest.mark.parametrize("bits", [4, 6, 8, 16])
def test_quantizers_are_idempotent(bits):
    x = torch.randn(500)
    for spec in (fixed_point_spec(x, bits), affine_weight_spec(x, bits, per_channel=False),
                 affine_activation_spec(-1.0, 2.0, bits)):
        once = fake_quantize(x, spec)
        assert torch.equal(fake_quantize(once, spec), once)


def test_saturation_and_straight_through_gradient():
    spec = QuantSpec("fixed", 4, -8, 7, [0.25], [0], [2])     # 4-bit, 2 fractional bits: [-2, 1.75]
    x = torch.tensor([-5.0, -2.0, 0.3, 1.75, 1.9, 9.0], requires_grad=True)
    y = fake_quantize(x, spec)
    assert y.tolist() == [-2.0, -2.0, 0.25, 1.75, 1.75, 1.75]
    y.sum().backward()
    # gradient passes where round(x / s) is inside [-8, 7]: 1.9 / 0.25 = 7.6 rounds to 8, outside
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0, 0.0]


def test_radix_point_hand_worked():
    # max |x| = 3 → ⌈log2 3⌉ = 2 → fl0 = 8 − 1 − 2 = 5; all values are exact at fl = 5 (step 1/32)
    # while fl = 6 would saturate 3.0 (3 · 64 = 192 > 127): fl = 5, error 0
    spec = fixed_point_spec(torch.tensor([0.5, -0.25, 3.0]), 8)
    assert spec.frac_bits == [5] and (spec.qmin, spec.qmax) == (-128, 127)
    # non-negative values (after ReLU) use the unsigned range: fl0 = 8 − 2 = 6, 3 · 64 = 192 ≤ 255
    spec = fixed_point_spec(torch.tensor([0.5, 0.25, 3.0]), 8)
    assert spec.frac_bits == [6] and (spec.qmin, spec.qmax) == (0, 255)
    # one outlier among many small values: saturating it costs less than coarse steps for all
    x = torch.cat([torch.full((1000,), 0.013), torch.tensor([1.0])])
    spec = fixed_point_spec(x, 4, signed=True)
    assert spec.frac_bits[0] > 3     # fl0 = 3 - 0 = 3 would quantize 0.013 to 0 (error 13)


def test_affine_activation_hand_worked():
    spec = affine_activation_spec(-1.0, 3.0, 8)
    assert spec.scale[0] == pytest.approx(4 / 255) and spec.zero_point == [64]   # round(63.75)
    assert fake_quantize(torch.tensor([0.0]), spec).item() == 0.0                # zero is exact


def test_integer_arithmetic_equals_the_quantized_float_layer():
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(20, 7))
    quantize_linear(layer, [torch.rand(16, 20) * 2 - 0.5], scheme="affine", weight_bits=8, activation_bits=8)
    freeze(layer)
    x = torch.rand(5, 20) * 2 - 0.5
    expected = layer(x)
    (qw, ws), = integer_weights(layer).values()
    assert qw.dtype == torch.int8
    xs = input_spec(layer[0])
    qx = integer_codes(x, xs).long()
    acc = (qx - xs.zero_point[0]) @ qw.long().T                 # int64 accumulation
    y = acc.double() * xs.scale[0] * torch.tensor(ws.scale, dtype=torch.float64) + layer[0].bias.double()
    assert torch.allclose(expected.double(), y, atol=1e-5)


@pytest.mark.parametrize("scheme,bits,per_channel", [("fixed", 8, False), ("fixed", 4, False),
                                                     ("affine", 8, True), ("affine", 8, False), ("fixed", 16, False)])
@pytest.mark.parametrize("coding", ["huffman", "fixed"])
def test_quantized_model_round_trips_through_the_file(tmp_path, scheme, bits, per_channel, coding):
    torch.manual_seed(0)
    model = models.create("lenet5")
    quantize_linear(model, _batches(), scheme=scheme, weight_bits=bits, activation_bits=8, per_channel=per_channel)
    freeze(model)
    x = _batches(1, seed=1)[0][0]
    expected = model.eval()(x)
    layers = fmt.save(model, tmp_path / "q.edlz", coding=coding)
    quant = [r for r in layers if r.kind == "quant"]
    assert len(quant) == 4 and all(r.weight_bits == bits for r in quant)
    if coding == "fixed":
        assert all(r.size_bytes == (r.weights * bits + 7) // 8 for r in quant)
    loaded = fmt.load(tmp_path / "q.edlz")
    for name, t in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], t), name
    assert torch.equal(loaded(x), expected)          # the input quantizers came back too
    # and a second save of the loaded model gives the same bytes
    assert fmt.encode(loaded, coding=coding)[0] == (tmp_path / "q.edlz").read_bytes()


def test_fine_tuning_reaches_the_latent_weights():
    torch.manual_seed(0)
    model = models.create("lenet300")
    quantize_linear(model, _batches(), scheme="fixed", weight_bits=4, activation_bits=8)
    latent = model.fc1.parametrizations.weight.original
    model(_batches(1)[0][0]).sum().backward()
    assert latent.grad is not None and latent.grad.abs().sum() > 0
    assert torch.unique(model.fc1.weight.detach()).numel() <= 16


def _crafted(data, mutate):
    base = 16 + int.from_bytes(data[8:12], "little")
    header = json.loads(zlib.decompress(data[16:base]))
    rec = next(r for r in header["tensors"] if r.get("kind") == "quant")
    mutate(rec)
    raw = zlib.compress(json.dumps(header).encode())
    return data[:8] + len(raw).to_bytes(4, "little") + zlib.crc32(raw).to_bytes(4, "little") + raw + data[base:]


@pytest.mark.parametrize("mutate", [
    lambda r: r["quant"].update(scheme="float"),
    lambda r: r["quant"].update(bits=1),
    lambda r: r["quant"].update(qmin=-1000),
    lambda r: r["quant"].update(scale=[-1.0] * len(r["quant"]["scale"])),
    lambda r: r["quant"].update(scale=r["quant"]["scale"][:-1], zero_point=r["quant"]["zero_point"][:-1]),
    lambda r: r["quant"].update(zero_point=[999] * len(r["quant"]["zero_point"])),
    lambda r: r["quant"].update(axis=3),
    lambda r: r.pop("quant"),
])
def test_corrupt_quantizer_records_are_refused(mutate):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 6))
    quantize_linear(model, None, scheme="affine", weight_bits=8, activation_bits=None)
    freeze(model)
    data = fmt.encode(model, coding="fixed")[0]
    with pytest.raises(FormatError) as e:
        fmt.decode(_crafted(data, mutate))
    assert "\n" not in str(e.value)


def test_bad_settings_are_refused():
    model = nn.Sequential(nn.Linear(10, 6))
    with pytest.raises(RecipeError, match="bits"):
        quantize_linear(model, None, weight_bits=1, activation_bits=None)
    with pytest.raises(RecipeError, match="scheme"):
        quantize_linear(model, None, scheme="log")
    with pytest.raises(RecipeError, match="calibration"):
        quantize_linear(model, None, weight_bits=8, activation_bits=8)


def test_a_peak_at_a_power_of_two_stays_exact():
    spec = fixed_point_spec(torch.tensor([1.0, 0.5, -0.25]), 8)       # 1.0 · 2^7 = 128 would saturate
    assert spec.frac_bits == [6] and fake_quantize(torch.tensor([1.0]), spec).item() == 1.0


def test_changed_weights_are_not_written_as_stale_codes():
    from efficientdl.compress.quantization.share import share

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 10))
    quantize_linear(model, None, scheme="fixed", weight_bits=4, activation_bits=None)
    freeze(model)
    share(model, bits=2)                                    # the values leave the fixed-point grid
    data, layers = fmt.encode(model)
    assert {r.name: r.kind for r in layers}["0.weight"] in ("shared", "codes")
    assert torch.equal(fmt.decode(data).tensors["0.weight"], model[0].weight.detach())


def test_input_quantizers_come_back_on_a_users_model_and_in_the_compressed_runtime(tmp_path):
    from efficientdl.compress.quantization.share import share

    torch.manual_seed(0)
    build = lambda: nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))  # noqa: E731  no registry name
    model = build()
    calibration = [torch.randn(32, 16)]
    quantize_linear(model, calibration, scheme="fixed", weight_bits=None, activation_bits=4)
    freeze(model)
    share(model, bits=3)
    x = torch.randn(5, 16)
    expected = model(x)
    fmt.save(model, tmp_path / "m.edlz")
    assert torch.equal(fmt.load(tmp_path / "m.edlz", model=build)(x), expected)
    runtime = fmt.load(tmp_path / "m.edlz", model=build, runtime="compressed")
    assert runtime.edl_runtime.compressed == ["0.weight", "2.weight"]
    assert torch.allclose(runtime(x), expected, atol=1e-5)


def test_overflowing_scale_is_refused():
    model = nn.Sequential(nn.Linear(10, 6))
    quantize_linear(model, None, scheme="affine", weight_bits=8, activation_bits=None)
    freeze(model)
    data = fmt.encode(model, coding="fixed")[0]
    for bad in (1e39, 1e-50):
        with pytest.raises(FormatError, match="float32"):
            fmt.decode(_crafted(data, lambda r, b=bad: r["quant"].update(scale=[b] * len(r["quant"]["scale"]))))


def test_misspelled_layer_names_are_refused():
    model = models.create("lenet300")
    with pytest.raises(RecipeError, match="fc4"):
        quantize_linear(model, None, weight_bits={"fc4": 4}, activation_bits=None)
