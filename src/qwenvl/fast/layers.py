"""Inference versions of the reference layers (qwenvl/model), on aten alone: the same results, fewer passes over
memory. Each is a subclass of the reference module with the same parameters and state dict; `use_fast_layers`
swaps them in, and fuse.py builds the fused attention and MLP.

- `FastLinear`: half-precision weights under float32 activations (layers.compute_dtype). The reference casts
  the whole weight matrix up on every call; for decoding rows the input is cast down instead (a
  matrix-vector product reads the weights once: upcasting them costs more than the product), and below
  BLOCKED_MAX_ROWS the weights are cast up block by block into one reused, cache-resident buffer.
- `FusedAttention`, `FusedSwiGLU`: one product for q/k/v and for gate/up; RoPE and the SiLU gate in place; a
  single query per row (decoding) on the CPU attends through two grouped matmuls instead of SDPA's kernel,
  which is built for many queries.
- `FastVisionAttention`: the tower's RoPE in place.
docs/benchmarks.md holds the measured effect of each.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..model.layers import Linear, SwiGLU, apply_rope
from ..model.text import Attention, Packed, attend
from ..model.vision import VisionAttention, segment_attention

# Below this many rows a Linear whose input is wider than its weights casts the input down; at or above it,
# it casts the weights up (the cast is amortised over the rows). The native products use the same split.
UPCAST_MIN_ROWS = 16

# Inference with fewer rows than this upcasts the weights block by block (`blocked_upcast_linear`); above
# it the one full cast is amortised anyway.
BLOCKED_MAX_ROWS = 2048
BLOCK_BYTES = 8 << 20


def blocked_upcast_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """F.linear(x, w.to(x.dtype), b) without a full-precision copy of w: blocks of ~8 MB of output rows are
    cast into one reused buffer and multiplied while they are still in cache (the plain path writes and
    re-reads a copy of the whole matrix, on fresh pages)."""
    n, k = w.shape
    x2 = x.reshape(-1, k)
    step = max(1, BLOCK_BYTES // (k * x.element_size()))
    buf = torch.empty(min(step, n), k, dtype=x.dtype, device=x.device)
    out = torch.empty(x2.shape[0], n, dtype=x.dtype, device=x.device)
    for i in range(0, n, step):
        j = min(n, i + step)
        block = buf[:j - i].copy_(w[i:j])
        if b is None:
            out[:, i:j] = torch.mm(x2, block.t())
        else:
            out[:, i:j] = torch.addmm(b[i:j].to(x.dtype), x2, block.t())
    return out.view(*x.shape[:-1], n)


class FastLinear(Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.weight, self.bias
        if x.dtype == w.dtype:
            return F.linear(x, w, b)
        rows = x.numel() // x.shape[-1]
        if rows < UPCAST_MIN_ROWS:
            return F.linear(x.to(w.dtype), w, b).to(x.dtype)
        if rows < BLOCKED_MAX_ROWS and not torch.is_grad_enabled():
            return blocked_upcast_linear(x, w, b)
        return super().forward(x)


def apply_rope_inplace(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """model.layers.apply_rope with one output buffer instead of five temporaries (no autograd)."""
    if torch.is_grad_enabled():
        return apply_rope(x, cos, sin)
    x1, x2 = x.chunk(2, dim=-1)
    s1, s2 = sin.chunk(2, dim=-1)
    out = x * cos
    o1, o2 = out.chunk(2, dim=-1)
    o1.addcmul_(x2, s1, value=-1)
    o2.addcmul_(x1, s2)
    return out


def attend_one_query(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention for one query per row (q [B, Hq, 1, D]): the query heads sharing a key/value head stacked as
    rows of two grouped matmuls; softmax in float32, as SDPA accumulates."""
    B, Hq, _, D = q.shape
    Hkv = k.shape[1]
    scores = torch.matmul(q.view(B, Hkv, Hq // Hkv, D), k.transpose(-1, -2)).mul_(D ** -0.5)
    probs = scores.add_(mask).softmax(-1, dtype=torch.float32).to(v.dtype)  # mask [B, 1, 1, S] broadcasts
    return torch.matmul(probs, v).view(B, Hq, 1, D)


class FusedAttention(Attention):
    """q/k/v in one product (`qkv_proj`, rows stacked q, k, v); q and k are neighbouring heads of its output,
    rotated together."""

    qkv_proj: torch.nn.Module

    def project(self, x, cos, sin):
        B, L, _ = x.shape
        Hq, Hkv, D = self.n_heads, self.n_kv, self.head_dim
        qkv = self.qkv_proj(x).view(B, L, Hq + 2 * Hkv, D).transpose(1, 2)
        qk = apply_rope_inplace(qkv[:, :Hq + Hkv], cos, sin)
        return qk[:, :Hq], qk[:, Hq:], qkv[:, Hq + Hkv:]

    def attend_cached(self, q, cache, layer: int, rows, mask) -> torch.Tensor | None:
        """Decoding attention straight from the cache, [B, Hq, 1, D], or None to read the cache (native.py)."""
        return None

    def forward(self, x, cos, sin, mask, cache, layer, rows, start):
        B, L, _ = x.shape
        q, k, v = self.project(x, cos, sin)
        if cache is not None:
            cache.write(layer, k, v, rows, start)
            o = self.attend_cached(q, cache, layer, rows, mask) if L == 1 else None
            if o is not None:
                return self.o_proj(o.view(B, 1, -1))
            k, v = cache.read(layer, rows, mask.shape[-1], q.dtype)
        if L == 1 and q.device.type == "cpu" and not isinstance(mask, Packed):
            o = attend_one_query(q, k, v, mask)
        else:
            o = attend(q, k, v, mask)
        return self.o_proj(o.transpose(1, 2).reshape(B, L, -1))


class FusedSwiGLU(SwiGLU):
    """gate/up in one product (`gate_up_proj`, rows stacked gate, up); the SiLU gate in place."""

    gate_up_proj: torch.nn.Module

    def activate(self, gate_up: torch.Tensor) -> torch.Tensor:
        gate, up = gate_up.chunk(2, dim=-1)
        if torch.is_grad_enabled() or self.act is not F.silu:
            return self.act(gate) * up
        return F.silu(gate.contiguous(), inplace=True).mul_(up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.activate(self.gate_up_proj(x)))


class FastVisionAttention(VisionAttention):
    def forward(self, x, cos, sin, segments):
        N = x.shape[0]
        q, k, v = self.qkv(x).view(N, 3, self.num_heads, -1).unbind(1)
        q = apply_rope_inplace(q.float(), cos, sin).to(v.dtype)
        k = apply_rope_inplace(k.float(), cos, sin).to(v.dtype)
        return self.proj(segment_attention(q, k, v, segments).reshape(N, -1))


def swap_classes(model: torch.nn.Module, mapping: dict[type, type]) -> torch.nn.Module:
    """In place: every module whose exact type is a key of `mapping` becomes an instance of its value (a subclass
    that adds no state, so parameters, buffers and the state dict stay as they are)."""
    for m in model.modules():
        new = mapping.get(type(m))
        if new is not None:
            m.__class__ = new
    return model


def use_fast_layers(model: torch.nn.Module) -> torch.nn.Module:
    return swap_classes(model, {Linear: FastLinear, VisionAttention: FastVisionAttention})
