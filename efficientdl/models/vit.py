"""A small Vision Transformer (Dosovitskiy et al., "An image is worth 16×16 words:
Transformers for image recognition at scale", ICLR'21), laid out as timm writes it.

An image of ``H × W`` pixels is cut into ``N = (H/P)(W/P)`` patches of ``P × P``; a
convolution with kernel and stride ``P`` embeds each into ``D`` dimensions.  A learned
class token is prepended and learned position embeddings are added:

    z₀ = [x_cls; x¹E; …; xᴺE] + E_pos,                 E_pos ∈ ℝ^{(N+1)×D}

then ``L`` pre-norm encoder blocks

    z' = z + MSA(LN(z)),     z ← z' + MLP(LN(z')),     MLP(u) = W₂ GELU(W₁ u + b₁) + b₂,

with multi-head self-attention from ``nn.MultiheadAttention(batch_first=True)``
(``in_proj_weight`` of shape ``3D × D`` for the queries, keys and values, ``out_proj``
``D × D``) and an MLP of hidden width ``r · D``; a final LayerNorm and a linear head on
the class token give the scores, ``y = head(LN(z_L)[:, 0])``.

The defaults are sized for 28×28 Fashion-MNIST on a CPU: patches of 7 (16 tokens + the
class token), ``D = 64``, 6 blocks, 4 heads, MLP ratio 4 — 305,034 parameters with one
input channel and 10 classes, about 5 M multiply-accumulates per image; one epoch of
training (60,000 images, batches of 128) takes about 2 minutes on one CPU thread.
``patch_size=4`` (49 tokens) is somewhat more accurate and about 3× slower.
"""

from __future__ import annotations

import torch
from torch import nn

from efficientdl.errors import ModelError


class MLP(nn.Module):
    """``fc2(dropout(GELU(fc1(x))))``: the feed-forward part of an encoder block."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class EncoderBlock(nn.Module):
    """Pre-norm transformer encoder block: ``z + MSA(LN(z))``, then ``z + MLP(LN(z))``.

    Args:
        dim: the embedding width ``D``.
        heads: attention heads (``D`` must be divisible by it).
        mlp_ratio: the MLP's hidden width is ``mlp_ratio · D``.
        dropout: dropout in the attention and the MLP.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """ViT classifier for small images (see the module docstring).

    Args:
        num_classes: outputs of the head.
        in_channels: channels of the input images.
        image_size: side of the (square) input images; a multiple of ``patch_size``.
        patch_size: side ``P`` of a patch (the patch embedding's kernel and stride).
        dim: the embedding width ``D``.
        depth: the number of encoder blocks ``L``.
        heads: attention heads per block.
        mlp_ratio: the MLP's hidden width over ``D``.
        dropout: dropout after the embeddings, in attention and in the MLPs.

    Returns (``forward``):
        Class scores, shape ``(batch, num_classes)``.

    Raises:
        ModelError: ``image_size`` is not a multiple of ``patch_size`` or ``dim`` not one of ``heads``.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28, patch_size: int = 7,
                 dim: int = 64, depth: int = 6, heads: int = 4, mlp_ratio: float = 4.0,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ModelError(f"vit: image_size must be a multiple of patch_size, got {image_size} and {patch_size}")
        if dim % heads:
            raise ModelError(f"vit: dim must be a multiple of heads, got {dim} and {heads}")
        tokens = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens + 1, dim))
        self.pos_drop = nn.Dropout(dropout)
        self.blocks = nn.Sequential(*[EncoderBlock(dim, heads, mlp_ratio, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)              # timm's initialisation
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)           # (batch, N, D)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.pos_drop(x + self.pos_embed)
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])
