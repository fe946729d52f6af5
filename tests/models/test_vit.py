"""The small Vision Transformer: hand-counted parameters, shapes, the pre-norm block
against its equations, one training step, the file round trip and tensor discovery."""

import pytest
import torch
from torch import nn

from efficientdl import format as fmt
from efficientdl.core.tensors import compressible_tensors
from efficientdl.errors import ModelError
from efficientdl.models import create
from efficientdl.models.vit import EncoderBlock, VisionTransformer


pytestmark = pytest.mark.usefixtures("one_thread")


def hand_count(in_channels=1, classes=10, image=28, patch=7, dim=64, depth=6, ratio=4):
    tokens = (image // patch) ** 2
    embed = in_channels * dim * patch * patch + dim + dim + (tokens + 1) * dim      # conv, cls, positions
    hidden = ratio * dim
    block = 2 * 2 * dim + (3 * dim * dim + 3 * dim) + (dim * dim + dim) \
        + (dim * hidden + hidden) + (hidden * dim + dim)                            # 2 LN, in/out proj, MLP
    return embed + depth * block + 2 * dim + dim * classes + classes               # final LN, head


def count(model):
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_match_the_hand_count():
    assert count(create("vit")) == hand_count() == 305_034
    assert count(create("vit", in_channels=3, num_classes=5, image_size=32, patch_size=8, dim=96, depth=4,
                        heads=4, mlp_ratio=2)) == hand_count(3, 5, 32, 8, 96, 4, 2)


@pytest.mark.parametrize("kwargs, side", [({}, 28), ({"patch_size": 4}, 28), ({"image_size": 32, "patch_size": 8}, 32)])
def test_output_shape(kwargs, side):
    model = create("vit", num_classes=7, in_channels=3, **kwargs).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, side, side)).shape == (2, 7)
    assert model.pos_embed.shape == (1, (side // model.patch_embed.stride[0]) ** 2 + 1, 64)


def test_bad_sizes_say_what_was_expected():
    with pytest.raises(ModelError, match="image_size must be a multiple of patch_size, got 28 and 5"):
        create("vit", patch_size=5)
    with pytest.raises(ModelError, match="dim must be a multiple of heads"):
        create("vit", dim=30)


def test_encoder_block_is_pre_norm_attention_then_mlp():
    torch.manual_seed(0)
    block = EncoderBlock(16, 4).eval()
    z = torch.randn(2, 5, 16)
    with torch.no_grad():
        h = block.norm1(z)
        q, k, v = (h @ block.attn.in_proj_weight.T + block.attn.in_proj_bias).chunk(3, dim=-1)
        heads = lambda t: t.reshape(2, 5, 4, 4).transpose(1, 2)                  # (batch, heads, tokens, 4)
        a = torch.softmax(heads(q) @ heads(k).transpose(-1, -2) / 4 ** 0.5, dim=-1) @ heads(v)
        z1 = z + block.attn.out_proj(a.transpose(1, 2).reshape(2, 5, 16))       # z + MSA(LN(z))
        expected = z1 + block.mlp.fc2(nn.functional.gelu(block.mlp.fc1(block.norm2(z1))))
        assert torch.allclose(block(z), expected, atol=1e-5)


def test_one_training_step_changes_the_weights():
    torch.manual_seed(0)
    model = create("vit", depth=2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    nn.functional.cross_entropy(model(x), y).backward()
    assert all(p.grad is not None for p in model.parameters())
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == set(before)


def test_round_trips_through_the_file(tmp_path):
    torch.manual_seed(0)
    model = create("vit", depth=2, num_classes=5).eval()
    assert model.edl_arch == {"name": "vit", "kwargs": {"num_classes": 5, "in_channels": 1, "depth": 2}}
    fmt.save(model, tmp_path / "v.edlz")
    rebuilt = fmt.load(tmp_path / "v.edlz").eval()
    assert isinstance(rebuilt, VisionTransformer) and len(rebuilt.blocks) == 2
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), model(x), atol=1e-5)


def test_compressible_tensors_finds_patch_attention_and_mlp_weights():
    keys = {t.key: tuple(t.value.shape) for t in compressible_tensors(create("vit", depth=2))}
    assert keys["patch_embed"] == (64, 1, 7, 7) and keys["head"] == (10, 64)
    for i in range(2):
        assert keys[f"blocks.{i}.attn.in_proj_weight"] == (192, 64)
        assert keys[f"blocks.{i}.attn.out_proj"] == (64, 64)
        assert keys[f"blocks.{i}.mlp.fc1"] == (256, 64) and keys[f"blocks.{i}.mlp.fc2"] == (64, 256)
    assert not any("norm" in k for k in keys)
