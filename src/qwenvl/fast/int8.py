"""Weight-only int8 quantization: a post-load transform that replaces Linear layers by `Int8Linear`.

Each output channel (row of the weight) gets one symmetric scale, max|w| / 127; activations stay in
floating point. Decoding reads half the bytes of bfloat16 weights per token, which is what bounds its speed.

`Int8Linear` runs on aten: decoding rows on the CPU through `_weight_int8pack_mm` (int8 weights, bf16
activations, per-channel scales); many rows (prefill, the tower) dequantize once per call and run a float
GEMM, where the cast is amortised; elsewhere (CUDA) it dequantizes per call (simple and correct, not a fast
path). Dequantizing on every decoding call instead would be several times slower than bf16.
`NativeInt8Linear` (native.py swaps it in where the CPU kernels build) runs the native int8 products on
weights repacked for them. The state dict is the same everywhere: `qweight` int8 [out, in].
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

_HAS_INT8PACK = hasattr(torch.ops.aten, "_weight_int8pack_mm")


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[out, in] float -> (int8 [out, in], float32 scale [out]) with w ~= q * scale[:, None]."""
    w = w.detach().float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12)
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


class Int8Linear(nn.Module):
    """y = x @ (q * scale)^T + bias, with q int8 [out, in] and one float scale per output channel.
    `dtype` is the floating dtype of the original weights (the output dtype for inputs of that dtype)."""

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype):
        super().__init__()
        self.in_features, self.out_features = qweight.shape[1], qweight.shape[0]
        self.register_buffer("qweight", qweight)
        self.register_buffer("scale", scale.float())
        # int8pack_mm takes the scales in the activation's dtype: a bf16 copy (tiny) for it
        self.register_buffer("scale_bf16", scale.to(torch.bfloat16))
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.dtype = dtype

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        q, s = quantize_weight(linear.weight)
        return cls(q, s, linear.bias, linear.weight.dtype)

    def weight_int8(self) -> torch.Tensor:
        """The int8 weights as [out, in]."""
        return self.qweight

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        return (self.weight_int8().to(torch.float32) * self.scale[:, None]).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if rows < UPCAST_MIN_ROWS and x.device.type == "cpu" and _HAS_INT8PACK:
            shape = x.shape
            y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, shape[-1]).to(torch.bfloat16), self.weight_int8(),
                                                   self.scale_bf16)
            y = y.view(*shape[:-1], -1)
            if self.bias is not None:
                y = y + self.bias.to(y.dtype)
            return y.to(x.dtype)
        return F.linear(x, self.dequantize(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel"


class NativeInt8Linear(Int8Linear):
    """Int8Linear on the native CPU products. The weights are held in the layout the products stream fastest
    (`kernel_weight`: packed in blocks of 4 rows by cpu.pack_int8 where the shape allows, else [out, in]);
    the state dict still holds `qweight` [out, in], converted on save and load."""

    @classmethod
    def convert(cls, m: Int8Linear) -> "NativeInt8Linear":
        """In place: `m` becomes a NativeInt8Linear (its int8 weights repacked, not copied twice)."""
        q = m._buffers.pop("qweight")
        m.__class__ = cls
        m.register_buffer("kernel_weight", cpu.pack_int8(q) if cpu.packable(q) else q, persistent=False)
        return m

    def weight_int8(self) -> torch.Tensor:
        """[out, in] (a copy when the weights are packed)."""
        w = self.kernel_weight
        return cpu.unpack_int8(w) if w.dim() == 4 else w

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        destination[prefix + "qweight"] = self.weight_int8()
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        key = prefix + "qweight"
        q = state_dict.get(key)
        rest = {k: v for k, v in state_dict.items() if k != key}
        super()._load_from_state_dict(rest, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        if q is None:
            missing_keys.append(key)
        elif tuple(q.shape) != (self.out_features, self.in_features):
            error_msgs.append(f"size mismatch for {key}: copying a param with shape {tuple(q.shape)}, the shape in "
                              f"current model is {(self.out_features, self.in_features)}.")
        else:
            w = self.kernel_weight
            self.kernel_weight = cpu.pack_int8(q.to(torch.int8)) if w.dim() == 4 else q.to(torch.int8).clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.kernel_weight
        if x.numel() // x.shape[-1] < UPCAST_MIN_ROWS:
            if cpu.applies(xf := x.float(), w):
                return cpu.gemv_int8(xf, w, self.scale, self.bias).to(x.dtype)
        elif cpu.applies(x, w) and cpu.gemm_preferred():  # prefill: no dequantized copy of the weights
            return cpu.gemm_int8(x, w, self.scale, self.bias)
        return super().forward(x)


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
