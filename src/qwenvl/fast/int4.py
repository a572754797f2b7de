"""Weight-only 4-bit linear layers: `Int4Linear`, built from AWQ checkpoints (fast/awq.py) or by quantizing
our own weights group-wise (`quantize_int4`, `qwenvl.load(..., quantize="int4")`).

Format: along the input dimension, every `group_size` weights of an output channel share one float scale s
and one integer zero point z in 0..15; a weight is w = (q - z) * s with q in 0..15 (AWQ's definition,
symmetric quantization being z = 8). Stored as
- qweight uint8 [out, in / 2], in runs of 64 inputs laid out for the native product (`pack_int4`);
- scales float32 [out, in / group], zeros uint8 [out, in / group].
That is 4.3 bits per weight at group 128 (bf16: 16): decoding, bound by reading the weights, moves ~3.7x
fewer bytes.

`Int4Linear` runs on aten: it dequantizes once per call and runs the float GEMM (float32 on the CPU); correct
everywhere, and amortised for many rows (prefill, the tower). `NativeInt4Linear` (native.py swaps it in where
the CPU kernels build) runs decoding rows through the native 4-bit product, which reads the packed weights
as they are, and many rows through the native GEMM where it is preferred. Same buffers and state dict.
"""

from __future__ import annotations

import copy
import itertools
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from . import cpu
from .layers import UPCAST_MIN_ROWS

RUN = 64  # inputs per packed run (32 bytes); other widths are padded with zeros to a multiple of it
GROUP_STEP = 32  # the native product takes group sizes that are multiples of it (AWQ's releases: 128)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """[N, K] integers in 0..15 -> uint8 [N, K / 2]. Each run of 64 inputs is 16 little-endian 16-bit words;
    word j holds inputs j, 16 + j, 32 + j, 48 + j in its 4 nibbles, low to high (bytes 2j, 2j + 1 hold
    q[j] | q[16 + j] << 4 and q[32 + j] | q[48 + j] << 4): 4 shifts and masks of one 32-byte load give 4
    vectors of 16 consecutive inputs as 16-bit integers (cpu/int4.c)."""
    N, K = q.shape
    if K % RUN:  # a last partial run: zero weights (the product's fallback reads only the first K)
        q = torch.cat([q, q.new_zeros(N, RUN - K % RUN)], dim=1)
        K = q.shape[1]
    q = q.to(torch.uint8).view(N, K // RUN, 4, RUN // 4)
    lo, hi = q[:, :, 0] | (q[:, :, 1] << 4), q[:, :, 2] | (q[:, :, 3] << 4)  # [N, K/64, 16] each
    return torch.stack([lo, hi], dim=-1).reshape(N, K // 2)


def unpack_int4(p: torch.Tensor, in_features: int | None = None) -> torch.Tensor:
    """The inverse of `pack_int4`: uint8 [N, K / 2] -> uint8 [N, in_features] in 0..15 (default all K)."""
    N, half = p.shape
    p = p.view(N, half // (RUN // 2), RUN // 4, 2)
    lo, hi = p[..., 0], p[..., 1]
    q = torch.stack([lo & 0xF, lo >> 4, hi & 0xF, hi >> 4], dim=2).reshape(N, 2 * half)
    return q if in_features is None else q[:, :in_features]


def dequantize_int4(q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    """(q - z) * s in float32 for q [N, K] (values), scales/zeros [N, K / group]. With float16 scales (AWQ)
    every product is exact in float32 (a 5-bit integer times an 11-bit mantissa)."""
    N, K = q.shape
    G = scales.shape[1]
    w = (q.view(N, G, K // G).float() - zeros.view(N, G, 1).float()) * scales.view(N, G, 1).float()
    return w.view(N, K)


def group_size_for(in_features: int, preferred: int = 128) -> int:
    """The largest of preferred, 64, 32 that divides in_features (small models have narrow layers)."""
    if in_features % RUN == 0:
        for g in (preferred, 64, 32):
            if g <= in_features and in_features % g == 0 and g % GROUP_STEP == 0:
                return g
    raise ValueError(f"in_features {in_features} cannot be stored in int4 (it must be a multiple of {RUN})")


# range shrink factors tried per group by the clipping search: giving up the few largest weights for a finer
# step over the rest lowers the group's squared error (the search keeps 1.0 where it does not)
CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75)


def _quantize_groups(g: torch.Tensor, symmetric: bool, ratio: float):
    if symmetric:
        scales = (g.abs().amax(-1) * ratio / 7).clamp_min(1e-12)
        zeros = torch.full_like(scales, 8)
    else:
        lo, hi = g.amin(-1).clamp(max=0) * ratio, g.amax(-1).clamp(min=0) * ratio
        scales = ((hi - lo) / 15).clamp_min(1e-12)
        zeros = torch.round(-lo / scales).clamp_(0, 15)
    q = torch.round(g / scales[..., None] + zeros[..., None]).clamp_(0, 15)
    return q, scales, zeros


CHUNK_WEIGHTS = 16 << 20


def _search_groups(g: torch.Tensor, symmetric: bool, ratios) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    best = None
    for ratio in ratios:
        q, scales, zeros = _quantize_groups(g, symmetric, ratio)
        if len(ratios) == 1:
            return q, scales, zeros
        err = ((q - zeros[..., None]) * scales[..., None] - g).square().sum(-1)  # [rows, G]
        if best is None:
            best, best_err = (q, scales, zeros), err
            continue
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = (torch.where(better[..., None], q, best[0]), torch.where(better, scales, best[1]),
                torch.where(better, zeros, best[2]))
    return best


def quantize_weight_int4(w: torch.Tensor, group_size: int, symmetric: bool = False, clip_search: bool = False
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[out, in] float -> (q uint8 [out, in] in 0..15, scales float32 [out, G], zeros uint8 [out, G]).

    Asymmetric (default): each group's [min, max] (widened to include 0) maps onto 0..15, z = round(-min / s);
    every weight is then within half a step. Symmetric: z = 8 and s = max|w| / 7, q - 8 in -7..7.
    clip_search: per group, the range scaled by the one of CLIP_RATIOS with the least squared error.
    Rows go in chunks of ~16 M weights: a 151936-row LM head never has float copies of itself in flight."""
    N, K = w.shape
    if K % group_size:
        raise ValueError(f"group size {group_size} does not divide in_features {K}")
    ratios = CLIP_RATIOS if clip_search else (1.0,)
    q = torch.empty(N, K, dtype=torch.uint8, device=w.device)
    scales = torch.empty(N, K // group_size, device=w.device)
    zeros = torch.empty(N, K // group_size, dtype=torch.uint8, device=w.device)
    step = max(1, CHUNK_WEIGHTS // K)
    for i in range(0, N, step):
        g = w[i:i + step].detach().float().view(-1, K // group_size, group_size)
        qi, si, zi = _search_groups(g, symmetric, ratios)
        q[i:i + step] = qi.view(-1, K).to(torch.uint8)
        scales[i:i + step], zeros[i:i + step] = si, zi.to(torch.uint8)
    return q, scales, zeros


class Int4Linear(nn.Module):
    """y = x @ ((q - z) * s)^T + bias with 4-bit q (module docstring: format and kernels). `dtype` is the
    floating dtype of the model around it (the output dtype for inputs of that dtype)."""

    def __init__(self, q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bias: torch.Tensor | None,
                 dtype: torch.dtype = torch.float32):
        """q [out, in] integer values in 0..15 (unpacked), scales [out, G] and zeros [out, G] per group."""
        super().__init__()
        N, K = q.shape
        if scales.shape != zeros.shape or scales.shape[0] != N or K % scales.shape[1]:
            raise ValueError(f"int4 scales {tuple(scales.shape)} / zeros {tuple(zeros.shape)} do not fit "
                             f"weights {(N, K)}")
        self.in_features, self.out_features = K, N
        self.group_size = K // scales.shape[1]
        # the native product's layout; other shapes (AWQ allows them) use the dequantizing fallback
        self.native = self.group_size % GROUP_STEP == 0 and K % RUN == 0
        self.register_buffer("qweight", pack_int4(q))
        self.register_buffer("scales", scales.float().contiguous())
        self.register_buffer("zeros", zeros.to(torch.uint8).contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())
        self.dtype = dtype

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int | None = None, symmetric: bool = False,
                    clip_search: bool = True) -> "Int4Linear":
        g = group_size or group_size_for(linear.in_features)
        q, s, z = quantize_weight_int4(linear.weight, g, symmetric, clip_search)
        return cls(q, s, z, linear.bias, linear.weight.dtype)

    @classmethod
    def cat(cls, parts: list["Int4Linear"]) -> "Int4Linear | None":
        """The layers' outputs stacked into one layer (fuse.py: q/k/v, gate/up), exactly: groups run along
        the inputs, so rows concatenate with their scales and zero points. None when the group sizes differ."""
        if len({(p.group_size, p.in_features) for p in parts}) != 1 or len({p.bias is None for p in parts}) != 1:
            return None
        fused = cls.__new__(cls)
        nn.Module.__init__(fused)
        fused.in_features, fused.out_features = parts[0].in_features, sum(p.out_features for p in parts)
        fused.group_size, fused.dtype, fused.native = parts[0].group_size, parts[0].dtype, parts[0].native
        for name in ("qweight", "scales", "zeros", "bias"):
            ts = [getattr(p, name) for p in parts]
            fused.register_buffer(name, None if ts[0] is None else torch.cat(ts))
        return fused

    def weight_int4(self) -> torch.Tensor:
        """The 4-bit values as uint8 [out, in] (a copy)."""
        return unpack_int4(self.qweight, self.in_features)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_int4(self.weight_int4(), self.scales, self.zeros).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cdtype = torch.float32 if x.device.type == "cpu" else x.dtype
        w = self.dequantize(cdtype)
        return F.linear(x.to(cdtype), w, None if self.bias is None else self.bias.to(cdtype)).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int4 group {self.group_size}"


class NativeInt4Linear(Int4Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if cpu.applies(xf := x.float(), self.qweight):
            if x.numel() // x.shape[-1] < UPCAST_MIN_ROWS and self.native:
                return cpu.gemv_int4(xf, self.qweight, self.scales, self.zeros, self.bias).to(x.dtype)
            if cpu.gemm_preferred():
                return cpu.gemm(xf, self.dequantize(torch.float32), self.bias).to(x.dtype)
        return super().forward(x)


def quantize_int4(model: nn.Module, include: Iterable[str] = ("language_model", "lm_head"),
                  skip: Iterable[str] = (), group_size: int = 128, symmetric: bool = False) -> nn.Module:
    """Replace, in place, every nn.Linear whose qualified name starts with one of `include` (and with none of
    `skip`) by an Int4Linear, groups of `group_size` inputs (`group_size_for`: 64 or 32 where a layer's width
    is not a multiple of it), each group's range chosen by the clipping search (`quantize_weight_int4`).
    Default: the decoder and the LM head, as quantize_int8. Layers whose width is
    not a multiple of 64 stay in floating point."""
    include, skip = tuple(include), tuple(skip)
    targets = [(name, m) for name, m in model.named_modules()
               if isinstance(m, nn.Linear) and name.startswith(include) and not name.startswith(skip)]
    for name, m in targets:
        try:
            g = group_size_for(m.in_features, group_size)
        except ValueError:
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, Int4Linear.from_linear(m, g, symmetric, clip_search=True))
    return model


def quantized_copy_int4(model: nn.Module, include: Iterable[str] = ("language_model", "lm_head"),
                        skip: Iterable[str] = (), group_size: int = 128) -> nn.Module:
    """`quantize_int4` on a copy of `model` sharing every tensor it does not quantize (side-by-side comparisons)."""
    shared = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    return quantize_int4(copy.deepcopy(model, shared), include, skip, group_size)
