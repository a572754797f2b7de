"""Weight-only int8 quantization: a post-load transform that replaces Linear layers by `Int8Linear`.

Each output channel (row of the weight) gets one symmetric scale, max|w| / 127; activations stay in
floating point. Decoding reads half the bytes of bfloat16 weights per token, which is what bounds
its speed.

Kernels (chosen per call, by device and rows):
- CPU, fewer than UPCAST_MIN_ROWS rows (decoding): qwenvl.kernels' native int8 product where it is built
  (x86 with AVX2, a C compiler), on weights packed for it: ~2x a bf16 product of the same shape on 2 AVX2
  EPYC cores. Else aten's `_weight_int8pack_mm` (int8 weights, bf16 activations, per-channel scales),
  compute-bound on AVX2: ~1.3x bf16 per weight; on packed weights (the native kernel built but not
  applicable: autograd, torch.compile) it first unpacks them, a copy per call. Dequantizing the weight on
  every call would be ~10x slower than bf16.
- inputs with many rows (prefill, the tower) dequantize once per call and run a float GEMM: the cast is
  amortised there.
- elsewhere (CUDA): dequantize per call and use the float GEMM (simple and correct; not a fast path).
"""

from __future__ import annotations

import copy
import itertools
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels
from ..model.layers import UPCAST_MIN_ROWS

_HAS_INT8PACK = hasattr(torch.ops.aten, "_weight_int8pack_mm")


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[out, in] float -> (int8 [out, in], float32 scale [out]) with w ~= q * scale[:, None]."""
    w = w.detach().float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12)
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


class Int8Linear(nn.Module):
    """y = x @ (q * scale)^T + bias, with q int8 [out, in] and one float scale per output channel.
    `dtype` is the floating dtype of the original weights (the output dtype for inputs of that dtype).

    Where qwenvl.kernels' packed int8 product applies (a CPU it builds on, out % 4 == 0 and in % 16 == 0),
    `qweight` is stored packed in blocks of 4 rows ([out / 4, in / 16, 4, 16], kernels.pack_int8), the
    layout that product streams fastest; `weight_int8()` gives the [out, in] matrix either way, and a state
    dict in either layout loads into either."""

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype):
        super().__init__()
        self.in_features, self.out_features = qweight.shape[1], qweight.shape[0]
        self.register_buffer("qweight", kernels.pack_int8(qweight) if kernels.packable(qweight) else qweight)
        self.register_buffer("scale", scale.float())
        # int8pack_mm takes the scales in the activation's dtype: keep a bf16 copy (tiny) for the fast path
        self.register_buffer("scale_bf16", scale.to(torch.bfloat16))
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.dtype = dtype

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        q, s = quantize_weight(linear.weight)
        return cls(q, s, linear.bias, linear.weight.dtype)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a state dict saved where the layout differed (packed vs [out, in]): convert to this layer's layout
        key = prefix + "qweight"
        q = state_dict.get(key)
        if q is not None and q.dim() != self.qweight.dim():
            q = kernels.unpack_int8(q) if q.dim() == 4 else q
            state_dict[key] = kernels.pack_int8(q) if self.qweight.dim() == 4 else q
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def weight_int8(self) -> torch.Tensor:
        """The int8 weights as [out, in] (a copy when they are stored packed)."""
        return kernels.unpack_int8(self.qweight) if self.qweight.dim() == 4 else self.qweight

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        return (self.weight_int8().to(torch.float32) * self.scale[:, None]).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if rows < UPCAST_MIN_ROWS and x.device.type == "cpu":
            if kernels.applies(xf := x.float(), self.qweight):
                return kernels.gemv_int8(xf, self.qweight, self.scale, self.bias).to(x.dtype)
            if _HAS_INT8PACK:
                shape = x.shape
                y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, shape[-1]).to(torch.bfloat16), self.weight_int8(),
                                                       self.scale_bf16)
                y = y.view(*shape[:-1], -1)
                if self.bias is not None:
                    y = y + self.bias.to(y.dtype)
                return y.to(x.dtype)
        if kernels.applies(x, self.qweight) and kernels.gemm_preferred():  # prefill: no dequantized copy of W
            return kernels.gemm_int8(x, self.qweight, self.scale, self.bias)
        return F.linear(x, self.dequantize(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel"


def quantize_int8(model: nn.Module, include: Iterable[str] = ("language_model", "lm_head"),
                  skip: Iterable[str] = ()) -> nn.Module:
    """Replace, in place, every nn.Linear whose qualified name starts with one of `include` (and with none of
    `skip`) by an Int8Linear. Default: the decoder and the LM head; add "visual" for the tower too.
    A tied LM head is quantized on its own (the embedding table stays in floating point)."""
    include, skip = tuple(include), tuple(skip)
    targets = [(name, m) for name, m in model.named_modules()
               if isinstance(m, nn.Linear) and name.startswith(include) and not name.startswith(skip)]
    for name, m in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, Int8Linear.from_linear(m))
    return model


def quantized_copy(model: nn.Module, include: Iterable[str] = ("language_model", "lm_head"),
                   skip: Iterable[str] = ()) -> nn.Module:
    """`quantize_int8` on a copy of `model` that shares every tensor it does not quantize: the original stays
    as it was, and only the int8 weights take new memory (for side-by-side comparisons)."""
    shared = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    return quantize_int8(copy.deepcopy(model, shared), include, skip)


def weight_bytes(model: nn.Module) -> int:
    """Bytes of parameters and persistent buffers, shared tensors counted once."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() in seen or t.device.type == "meta":
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total
