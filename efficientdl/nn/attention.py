"""``nn.MultiheadAttention`` served from compressed projection weights.

``nn.MultiheadAttention.forward`` calls ``F.multi_head_attention_forward`` with
``in_proj_weight`` (or the separate ``q/k/v_proj_weight``) and ``out_proj.weight``; with a
compressed weight among them the call lands here (Vaswani et al. 2017):

    Q = q W_qᵀ + b_q,  K = k W_kᵀ + b_k,  V = v W_vᵀ + b_v        (one product for self-attention)
    head_i = softmax(Q_i K_iᵀ / √d + M) V_i,    out = [head_1 … head_h] W_oᵀ + b_o

The projections are served like ``F.linear`` over all tokens of the batch (the sparse ×
dense kernel or dense, by measurement); for cross-attention the query, key and value
row blocks of ``in_proj_weight`` are compressed weights of their own.  The attention
itself is ``F.scaled_dot_product_attention`` (or the explicit softmax when the weights
are asked for).  ``bias_k``/``bias_v``, ``add_zero_attn``, ``static_k``/``static_v`` and
dropout while training are computed from the decoded weights and recorded as fallbacks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ModelError
from .served import linear
from .weights import CompressedWeight, fallback, implements


def _proj(x, w, b):
    return linear(x, w, b) if isinstance(w, CompressedWeight) else F.linear(x, w, b)


def _block(w, start: int, stop: int):
    return w.rows(start, stop) if isinstance(w, CompressedWeight) else w[start:stop]


def _additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


@implements(F.multi_head_attention_forward)
def multi_head_attention_forward(query, key, value, embed_dim_to_check, num_heads, in_proj_weight, in_proj_bias,
                                 bias_k, bias_v, add_zero_attn, dropout_p, out_proj_weight, out_proj_bias,
                                 training=True, key_padding_mask=None, need_weights=True, attn_mask=None,
                                 use_separate_proj_weight=False, q_proj_weight=None, k_proj_weight=None,
                                 v_proj_weight=None, static_k=None, static_v=None, average_attn_weights=True,
                                 is_causal=False):
    """``F.multi_head_attention_forward`` with compressed projections (see the module docstring)."""
    args = (query, key, value, embed_dim_to_check, num_heads, in_proj_weight, in_proj_bias, bias_k, bias_v,
            add_zero_attn, dropout_p, out_proj_weight, out_proj_bias)
    kwargs = {"training": training, "key_padding_mask": key_padding_mask, "need_weights": need_weights,
              "attn_mask": attn_mask, "use_separate_proj_weight": use_separate_proj_weight,
              "q_proj_weight": q_proj_weight, "k_proj_weight": k_proj_weight, "v_proj_weight": v_proj_weight,
              "static_k": static_k, "static_v": static_v, "average_attn_weights": average_attn_weights,
              "is_causal": is_causal}
    unsupported = ("bias_k/bias_v" if bias_k is not None or bias_v is not None else
                   "add_zero_attn" if add_zero_attn else
                   "static_k/static_v" if static_k is not None or static_v is not None else
                   "dropout while training" if training and dropout_p > 0 else
                   "is_causal without attn_mask" if is_causal and attn_mask is None else
                   "compressed query/key/value inputs" if any(isinstance(t, CompressedWeight)
                                                              for t in (query, key, value)) else None)
    if unsupported:
        return fallback(F.multi_head_attention_forward, args, kwargs, unsupported)
    batched = query.dim() == 3
    if not batched:
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        key_padding_mask = key_padding_mask.unsqueeze(0) if key_padding_mask is not None else None
    tgt_len, bsz, embed_dim = query.shape
    if embed_dim != embed_dim_to_check:
        raise ModelError(f"attention expects embedding dimension {embed_dim_to_check}, got {embed_dim}")
    head_dim = embed_dim // num_heads
    e = embed_dim
    b_q, b_k, b_v = (None, None, None) if in_proj_bias is None else in_proj_bias.chunk(3)
    if use_separate_proj_weight:
        q = _proj(query, q_proj_weight, b_q)
        k = _proj(key, k_proj_weight, b_k)
        v = _proj(value, v_proj_weight, b_v)
    elif query is key and key is value:
        q, k, v = _proj(query, in_proj_weight, in_proj_bias).chunk(3, dim=-1)
    elif key is value:
        q = _proj(query, _block(in_proj_weight, 0, e), b_q)
        kv_bias = None if in_proj_bias is None else in_proj_bias[e:]
        k, v = _proj(key, _block(in_proj_weight, e, 3 * e), kv_bias).chunk(2, dim=-1)
    else:
        q = _proj(query, _block(in_proj_weight, 0, e), b_q)
        k = _proj(key, _block(in_proj_weight, e, 2 * e), b_k)
        v = _proj(value, _block(in_proj_weight, 2 * e, 3 * e), b_v)
    src_len = k.shape[0]

    def heads(t, length):
        return t.reshape(length, bsz * num_heads, head_dim).transpose(0, 1).reshape(bsz, num_heads, length, head_dim)

    q, k, v = heads(q, tgt_len), heads(k, src_len), heads(v, src_len)
    mask = _additive(attn_mask, q.dtype)
    if mask is not None:
        mask = mask.reshape(bsz, num_heads, tgt_len, src_len) if mask.dim() == 3 else mask.view(1, 1, tgt_len,
                                                                                               src_len)
    pad = _additive(key_padding_mask, q.dtype)
    if pad is not None:
        pad = pad.view(bsz, 1, 1, src_len)
        mask = pad if mask is None else mask + pad
    if need_weights:
        scores = torch.matmul(q * (1.0 / head_dim) ** 0.5, k.transpose(-2, -1))
        if mask is not None:
            scores = scores + mask
        attn = torch.softmax(scores, dim=-1)
        out = torch.matmul(attn, v)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        attn = None
    out = out.permute(2, 0, 1, 3).reshape(tgt_len * bsz, embed_dim)
    out = _proj(out, out_proj_weight, out_proj_bias).view(tgt_len, bsz, embed_dim)
    if attn is not None and average_attn_weights:
        attn = attn.mean(dim=1)
    if not batched:
        out = out.squeeze(1)
        attn = attn.squeeze(0) if attn is not None else None
    return out, attn
