"""Roofline arithmetic on known points, the device table, and workloads counted by hand."""

import pytest
import torch
from torch import nn

from efficientdl.compress.pruning.prune import apply_mask, magnitude_mask
from efficientdl.compress.quantization.share import share_layer
from efficientdl.compress.workload import file_workload, model_workload
from efficientdl import format as fmt
from efficientdl.hardware import HardwareError
from efficientdl.hardware.devices import DEVICES, get_device, load_device
from efficientdl.hardware.roofline import TPU_APPLICATIONS, application_point, attainable, layer_point
from efficientdl.hardware.workload import LayerWorkload


def test_tpu_paper_points():
    tpu = DEVICES["tpu-v1"]
    assert tpu.ridge_point["int8"] == pytest.approx(92e12 / 34e9)          # ≈ 2706 ops/byte
    mlp0 = application_point("MLP0", TPU_APPLICATIONS["MLP0"], tpu)
    assert mlp0.bound == "memory" and mlp0.attainable_ops == pytest.approx(200 * 34e9)
    cnn0 = application_point("CNN0", TPU_APPLICATIONS["CNN0"], tpu)
    assert cnn0.bound == "compute" and cnn0.attainable_ops == 92e12
    assert attainable(DEVICES["haswell"], 10.0, "fp32") == (10.0 * 51e9, "memory")
    assert DEVICES["haswell"].peak("fp16") == 1.3e12                       # falls back to the wider fp32 peak
    with pytest.raises(HardwareError, match="no peak"):
        DEVICES["tpu-v1"].peak("fp32")


def test_layer_point_by_hand():
    layer = LayerWorkload("fc", "fc", macs=1000, weights=1000, nonzero_weights=100, weight_bits=8,
                          input_elements=50, output_elements=20, input_density=0.5)
    assert layer.weight_bytes == 100 and layer.effective_macs == 50
    p = layer_point(layer, DEVICES["tpu-v1"], batch=4)
    assert p.ops == 2 * 50 * 4 and p.intensity_weight == 4.0
    assert p.intensity_total == pytest.approx(400 / (100 + 4 * 70 * 4))
    dense = layer_point(layer, DEVICES["tpu-v1"], batch=4, useful_only=False)
    assert dense.ops == 8000 and dense.bound == "memory"


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)          # 8×8 → 6×6
        self.fc = nn.Linear(4 * 36, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_model_and_file_workloads(tmp_path):
    torch.manual_seed(0)
    net = Net().eval()
    x = torch.rand(1, 1, 8, 8)
    w = {l.name: l for l in model_workload(net, x)}
    assert w["conv"].macs == 4 * 9 * 36 and w["conv"].weights == 36 and w["conv"].weight_bits == 32
    assert w["fc"].macs == 144 * 10 and w["fc"].input_elements == 144 and w["fc"].output_elements == 10
    relu_out = torch.relu(net.conv(x)).flatten(1)
    assert w["fc"].input_density == pytest.approx(float((relu_out != 0).float().mean()))
    apply_mask(net.fc, magnitude_mask(net.fc.weight, 0.75))
    share_layer(net.fc, bits=4)
    path = tmp_path / "net.edlz"
    fmt.save(net, path, index_bits={"Linear": 5, "Conv2d": 8}, infer_shared=False)
    rec = next(r for r in fmt.read(path).layers if r.name == "fc.weight")
    wf = {l.name: l for l in file_workload(path, x, model=Net())}
    assert wf["fc"].nonzero_weights == rec.nonzero == 360
    assert wf["fc"].weight_bits == pytest.approx((4 + 5) * rec.entries / rec.nonzero)
    assert wf["conv"].weight_bits == 32


def test_devices_from_yaml(tmp_path):
    path = tmp_path / "npu.yaml"
    path.write_text("name: npu\npeak_ops: {int8: 4.0e12}\nbandwidth_bytes_per_s: 2.0e10\non_chip_bytes: 1048576\n")
    d = get_device(str(path))
    assert d.name == "npu" and d.ridge_point["int8"] == 200
    path.write_text("peak_ops: {int8: 4.0e12}\nbandwidth_bytes_per_s: -1\non_chip_bytes: 1\n")
    with pytest.raises(HardwareError, match="bandwidth"):
        load_device(path)
    path.write_text("peak_ops: {int4: 4.0e12}\nbandwidth_bytes_per_s: 1\non_chip_bytes: 1\n")
    with pytest.raises(HardwareError, match="unknown precision"):
        load_device(path)
    with pytest.raises(HardwareError, match="unknown device"):
        get_device("tpu-v9")
