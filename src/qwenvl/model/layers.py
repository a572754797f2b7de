"""Small building blocks shared by the vision tower and the decoder."""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn


@lru_cache(maxsize=None)
def _cpu_has_native(dtype: torch.dtype) -> bool:
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if dtype == torch.float16:
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    return True


def compute_dtype(dtype: torch.dtype, device: torch.device | str) -> torch.dtype:
    """The dtype activations are computed in for weights stored in `dtype`.

    A CPU without bf16/fp16 matrix instructions (no AVX512-BF16/AMX) runs half-precision GEMMs several
    times slower than float32 ones: there the weights stay in half precision (memory, bandwidth) and the
    activations are float32 (see `Linear`). Everywhere else the storage dtype is the compute dtype."""
    if torch.device(device).type == "cpu" and dtype in (torch.bfloat16, torch.float16) and not _cpu_has_native(dtype):
        return torch.float32
    return dtype


class Linear(nn.Linear):
    """nn.Linear that also accepts inputs of another floating dtype than its weights (mixed precision:
    half-precision weights, float32 activations): the weights are cast to the input's dtype. Same parameters
    and state dict as nn.Linear."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.weight, self.bias
        if x.dtype != w.dtype:
            w, b = w.to(x.dtype), None if b is None else b.to(x.dtype)
        return F.linear(x, w, b)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 and cast back before the scale, as the reference does: bf16 results match.
        return self.weight * F.rms_norm(x.float(), x.shape[-1:], eps=self.eps).to(x.dtype)


class SwiGLU(nn.Module):
    """down(act(gate(x)) * up(x)); the tower's projections carry biases, the decoder's do not."""

    def __init__(self, dim: int, hidden: int, bias: bool, act: str = "silu"):
        super().__init__()
        self.gate_proj = Linear(dim, hidden, bias=bias)
        self.up_proj = Linear(dim, hidden, bias=bias)
        self.down_proj = Linear(hidden, dim, bias=bias)
        self.act = ACTIVATIONS[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


ACTIVATIONS = {
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
}


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Half-rotation RoPE layout (the HF checkpoints' layout, no q/k permutation needed)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + rotate_half(x) * sin


def rope_inv_freq(dim: int, theta: float, device: torch.device | str | None = None) -> torch.Tensor:
    """The rotary inverse frequencies theta^(-2i / dim), i < dim / 2, in float32: one per pair of channels."""
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float, device=device) / dim))
