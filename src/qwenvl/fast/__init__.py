"""Speed, beside the reference model (qwenvl/model): transforms that `qwenvl.load` applies after loading, each
replacing modules by subclasses that compute the same thing faster, and the native CPU kernels they call.

    fuse.py           q/k/v and gate/up in one product each (FusedAttention, FusedSwiGLU)
    int8.py, int4.py  weight-only int8 and 4-bit linears (quantize="int8" / "int4"); awq.py reads AWQ
                      checkpoints into 4-bit linears
    layers.py         aten-only inference layers: mixed-precision Linear without full upcasts, in-place RoPE
                      and SiLU gate, single-query attention
    native.py         the same layers on the native kernels, where they build
    native_decode.py  a whole decoding step in one native call (engine.Engine uses it)
    cpu/              the C sources, their header, building and checked bindings

This package imports qwenvl.model; the model never imports it. Every transform keeps the state dict's names
and shapes, so a prepared model saves as the plain one does.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..model.weights import load_model
from .awq import load_awq_model, read_quantization
from .fuse import fuse_projections
from .int4 import quantize_int4
from .int8 import quantize_int8
from .layers import use_fast_layers
from .native import use_native_kernels

QUANTIZE = (None, "int8", "int4")


def prepare(model: nn.Module, quantize: str | None = None, native: bool = True) -> nn.Module:
    """The inference transforms, in place and in order: fusion, optional quantization of the decoder and LM
    head, the aten fast layers, and (native=True, where they build) the native kernels."""
    if quantize not in QUANTIZE:
        raise ValueError(f"quantize must be None, 'int8' or 'int4', got {quantize!r}")
    fuse_projections(model)
    if quantize == "int8":
        quantize_int8(model)
    elif quantize == "int4":
        quantize_int4(model)
    use_fast_layers(model)
    if native:
        use_native_kernels(model)
    return model


def load_checkpoint(path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                    check_weights: bool | None = None) -> nn.Module:
    """model.weights.load_model, or for an AWQ checkpoint (config.json's quantization_config) the model with its
    4-bit weights kept 4-bit (awq.py)."""
    path = Path(path)
    if (quant := read_quantization(path)) is not None:
        from ..config import QwenVLConfig
        return load_awq_model(path, QwenVLConfig.from_file(path), dtype, device, quant)
    return load_model(path, dtype, device, check_weights=check_weights)
