"""The Qwen2.5 decoder with MRoPE. Reference: transformers 4.51.3 Qwen2_5_VLModel.

Shapes: B batch, L new tokens, S keys (cached + new), Hq query heads, Hkv key/value heads (GQA),
D head dim (GQA: keys/values are never repeated in memory). Positions [3, B, L] (time, height, width)
come from the caller; the model keeps no position state. Attention masks are boolean, True = may attend,
[B, 1, L, S]; the decoder turns them into an additive float mask once per forward (`TextModel.prepare`).
Packed training rows may instead pass `Packed` segment lengths: block-diagonal causal attention with no
L x L mask (FlashAttention's "varlen" idea).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TextConfig
from .layers import Linear, RMSNorm, SwiGLU, apply_rope, compute_dtype, rope_inv_freq
from .rope import mrope_cos_sin


# The cache rows a forward pass works on: a slice where they are consecutive (the common case: reading the
# cache is then a view, not a copy per layer and step), else an index tensor.
Rows = slice | torch.Tensor


def as_rows(rows: torch.Tensor | None, batch_size: int) -> Rows:
    if rows is None:
        return slice(0, batch_size)
    r = rows.tolist()
    if r and r == list(range(r[0], r[0] + len(r))):
        return slice(r[0], r[0] + len(r))
    return rows


@dataclass(frozen=True)
class Packed:
    """Segments laid end to end in one row (inputs [1, L], L = sum(lengths)): each attends causally to
    itself only. The same result as a block-diagonal causal mask, but each segment is its own causal
    attention call, where a masked [L, L] attention would spend most of its work on masked-out pairs."""

    lengths: tuple[int, ...]


def attend_packed(q, k, v, packed: Packed) -> torch.Tensor:
    gqa = k.shape[1] != q.shape[1]
    outs = [F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, enable_gqa=gqa)
            for qs, ks, vs in zip(*(t.split(packed.lengths, dim=2) for t in (q, k, v)))]
    return torch.cat(outs, dim=2)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | Packed) -> torch.Tensor:
    """Attention with an additive mask (or packed segments); GQA when k/v have fewer heads than q (never
    repeated in memory)."""
    if isinstance(mask, Packed):
        return attend_packed(q, k, v, mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=k.shape[1] != q.shape[1])


class KVCache:
    """Preallocated keys/values for every layer: [layers, B, Hkv, S_max, D] each.

    `lengths[b]` counts the filled slots of row b. Rows are independent: a row can be prefilled on its own
    and joined to a running batch (continuous batching), and rows of different lengths decode together."""

    def __init__(self, cfg: TextConfig, batch_size: int, max_len: int, dtype: torch.dtype,
                 device: torch.device | str = "cpu"):
        shape = (cfg.num_hidden_layers, batch_size, cfg.num_key_value_heads, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.max_len = max_len

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor, rows: Rows, start: int | torch.Tensor):
        """Store k/v [B', Hkv, L, D] for `rows` at positions start[b] .. start[b] + L. An int `start` is the
        same for every row (one prompt, or rows of equal lengths): with consecutive rows the write is a slice."""
        L = k.shape[2]
        if isinstance(start, int) and isinstance(rows, slice):
            self.k[layer, rows, :, start:start + L] = k
            self.v[layer, rows, :, start:start + L] = v
            return
        if isinstance(rows, slice):
            rows = torch.arange(self.batch_size, device=k.device)[rows]
        if isinstance(start, int):
            start = torch.full((len(rows),), start, device=k.device)
        pos = start.view(-1, 1) + torch.arange(L, device=k.device)  # [B', L]
        r = rows.view(-1, 1).expand_as(pos)
        # index_put on [B, S, Hkv, D] views: rows and positions select, heads and dims are copied whole.
        self.k[layer].transpose(1, 2).index_put_((r, pos), k.transpose(1, 2).to(self.k.dtype))
        self.v[layer].transpose(1, 2).index_put_((r, pos), v.transpose(1, 2).to(self.v.dtype))

    def read(self, layer: int, rows: Rows, length: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [B', Hkv, length, D] of `rows`, in `dtype` (a half-precision cache under float32
        compute is cast up: layers.compute_dtype)."""
        k, v = self.k[layer, rows, :, :length], self.v[layer, rows, :, :length]
        return k.to(dtype), v.to(dtype)


class Attention(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = Linear(cfg.hidden_size, self.n_heads * self.head_dim, bias=True)
        self.k_proj = Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=True)
        self.v_proj = Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=True)
        self.o_proj = Linear(self.n_heads * self.head_dim, cfg.hidden_size, bias=False)

    def project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """q, k, v as [B, heads, L, D], q and k rotated."""
        B, L, _ = x.shape
        Hq, Hkv, D = self.n_heads, self.n_kv, self.head_dim
        q = self.q_proj(x).view(B, L, Hq, D).transpose(1, 2)
        k = self.k_proj(x).view(B, L, Hkv, D).transpose(1, 2)
        v = self.v_proj(x).view(B, L, Hkv, D).transpose(1, 2)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def forward(self, x, cos, sin, mask, cache: KVCache | None, layer: int, rows, start):
        B, L, _ = x.shape
        q, k, v = self.project(x, cos, sin)
        if cache is not None:
            cache.write(layer, k, v, rows, start)
            k, v = cache.read(layer, rows, mask.shape[-1], q.dtype)
        o = attend(q, k, v, mask)
        return self.o_proj(o.transpose(1, 2).reshape(B, L, -1))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size, bias=False, act=cfg.hidden_act)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, mask, cache, layer, rows, start):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, layer, rows, start)
        return x + self.mlp(self.post_attention_layernorm(x))


class TextModel(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.register_buffer("inv_freq", rope_inv_freq(cfg.head_dim, cfg.rope_theta), persistent=False)

    def forward(self, embeds: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None = None,
                cache: KVCache | None = None, rows: torch.Tensor | None = None) -> torch.Tensor:
        """embeds [B, L, E], positions [3, B, L] -> hidden states [B, L, E] (after the final norm).

        Without a cache, `mask` defaults to causal. With a cache, the new tokens of row b are written at
        cache.lengths[b] onwards (`rows` selects which cache rows the B inputs belong to), `mask` must cover
        the keys [0, S) and cache.lengths is advanced by L."""
        x, cos, sin, mask, rows, start = self.prepare(embeds, positions, mask, cache, rows)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, mask, cache, i, rows, start)
        if cache is not None:
            cache.lengths[rows] += x.shape[1]
        return self.norm(x)

    @torch.compiler.disable  # branches on tensor values: eager even when the decoder is compiled (engine.Engine)
    def prepare(self, embeds, positions, mask, cache, rows):
        """What the layers share: activations in the compute dtype, the rotary tables, the cache rows and start
        positions, and the additive mask."""
        B, L, _ = embeds.shape
        embeds = embeds.to(compute_dtype(embeds.dtype, embeds.device))
        cos, sin = mrope_cos_sin(positions, self.inv_freq, self.cfg.mrope_section, embeds.dtype)
        cos, sin = cos[:, None], sin[:, None]  # broadcast over heads
        start = None
        if cache is not None:
            rows = as_rows(rows, cache.batch_size)
            # a copy, not a view of lengths: the compiled decoder (engine.Engine) fails on an input that
            # aliases a tensor it mutates (lengths advance after the layers)
            start = cache.lengths[rows].clone()
            if bool((start == start[0]).all()):
                start = int(start[0])  # one position for all rows: cache writes are slices
            if mask is None:
                raise ValueError("a mask over the cached keys is required when decoding with a cache")
        elif isinstance(mask, Packed):
            if B != 1 or sum(mask.lengths) != L:
                raise ValueError(f"Packed segments cover {sum(mask.lengths)} tokens of one row; inputs are {B} x {L}")
            return embeds, cos, sin, mask, rows, start
        elif mask is None:
            mask = torch.ones(L, L, dtype=torch.bool, device=embeds.device).tril()[None, None]
        # Additive float mask with the dtype's minimum, as the reference builds it: a query row with nothing to
        # attend to (left padding) then averages all values uniformly instead of producing NaN.
        mask = torch.zeros(mask.shape, dtype=embeds.dtype, device=embeds.device).masked_fill_(
            ~mask, torch.finfo(embeds.dtype).min)
        return embeds, cos, sin, mask, rows, start


def causal_padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, S] 0/1 padding mask -> boolean [B, 1, S, S]: causal and never attending to padding."""
    B, S = attention_mask.shape
    keep = attention_mask.bool()
    mask = torch.ones(S, S, dtype=torch.bool, device=keep.device).tril()[None] & keep[:, None, :]
    return mask[:, None]
