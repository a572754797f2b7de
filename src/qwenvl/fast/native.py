"""The native CPU kernels (fast/cpu) as a transform: `use_native_kernels` swaps each layer for a subclass that
calls them where they apply (float32 activations on a CPU they build on, no autograd, not traced) and
defers to its parent otherwise. Same parameters; same state dicts (NativeInt8Linear converts its layout).

- `NativeLinear`: decoding rows with bf16 weights through the bf16 matrix-vector product, many rows through
  the native GEMM where it is preferred (cpu.gemm_preferred);
- `NativeRMSNorm`, `NativeSwiGLU`: one call instead of aten's small ops per row;
- `NativeAttention`: decoding attention read from the bf16 KV cache as it is, with no float32 copy of it;
- `NativeInt8Linear`, `NativeInt4Linear` (int8.py, int4.py): the native int8 and 4-bit products.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..model.layers import RMSNorm
from . import cpu
from .int4 import Int4Linear, NativeInt4Linear
from .int8 import Int8Linear, NativeInt8Linear
from .layers import UPCAST_MIN_ROWS, FastLinear, FusedAttention, FusedSwiGLU, swap_classes


class NativeLinear(FastLinear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if w.dtype in (torch.bfloat16, torch.float32) and cpu.applies(x, w):
            if x.numel() // x.shape[-1] >= UPCAST_MIN_ROWS:
                if cpu.gemm_preferred():
                    return cpu.gemm(x, w, self.bias)
            elif w.dtype == torch.bfloat16:
                return cpu.gemv_bf16(x, w, self.bias)
        return super().forward(x)


class NativeRMSNorm(RMSNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if w.dtype in (torch.bfloat16, torch.float32) and cpu.applies(x, w):
            return cpu.rms_norm(x, w, self.eps)
        return super().forward(x)


class NativeSwiGLU(FusedSwiGLU):
    def activate(self, gate_up: torch.Tensor) -> torch.Tensor:
        if self.act is F.silu and cpu.applies(gate_up, gate_up):
            return cpu.silu_mul(gate_up)
        return super().activate(gate_up)


class NativeAttention(FusedAttention):
    def attend_cached(self, q, cache, layer: int, rows, mask) -> torch.Tensor | None:
        if cache.k.dtype != torch.bfloat16 or self.head_dim % 8 or not cpu.applies(q, cache.k):
            return None
        if isinstance(rows, slice):  # consecutive rows: a contiguous block of the cache
            k, v, idx = cache.k[layer, rows], cache.v[layer, rows], None
        else:
            k, v, idx = cache.k[layer], cache.v[layer], rows
        return cpu.attend_bf16(q, k, v, idx, mask.expand(q.shape[0], 1, 1, -1))


NATIVE = {FastLinear: NativeLinear, RMSNorm: NativeRMSNorm, FusedSwiGLU: NativeSwiGLU,
          FusedAttention: NativeAttention, Int4Linear: NativeInt4Linear}


def use_native_kernels(model: nn.Module) -> nn.Module:
    """In place, where the kernels build here (else the model is left as it is). Run after fusion, quantization
    and `use_fast_layers` (the native modules are subclasses of the fast ones)."""
    if not cpu.available():
        return model
    swap_classes(model, NATIVE)
    for m in model.modules():
        if type(m) is Int8Linear and m.qweight.is_cpu:
            NativeInt8Linear.convert(m)
    return model
