"""Decoding steps as one native call over all decoder layers (kernels/decode.c).

A decoding step on a CPU reads every weight once; between those reads the Python layers run ~40 small ops
each, and they run cold: the weight stream evicts the interpreter's and torch's working set from the
caches. On 2 EPYC cores that cost ~40 ms of a ~370 ms 3B step. `NativeDecoder` runs the layers of a step
in one call where the model and the cache are in formats decode.c reads (fused q/k/v and gate/up, SiLU,
bfloat16, int8 or int4 weights, a bfloat16 cache, float32 activations); everywhere else, and for prefill, it
calls the model's own forward. Embedding, positions, the mask (`TextModel.prepare`) and the final norm stay
the model's, so both paths share them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import kernels
from ..model.layers import UPCAST_MIN_ROWS, Linear, compute_dtype
from ..model.text import KVCache, TextModel
from .int4 import Int4Linear
from .quantize import Int8Linear


def _linear_spec(mod) -> kernels.LinearSpec | None:
    if type(mod) is Linear:
        return kernels.linear_spec(mod.weight, None, mod.bias)
    if type(mod) is Int8Linear:
        return kernels.linear_spec(mod.qweight, mod.scale, mod.bias)
    if type(mod) is Int4Linear and mod.native:
        return kernels.linear_spec_int4(mod.qweight, mod.scales, mod.zeros, mod.bias)
    return None  # anything else (unfused projections, float32 weights, adapters): the model's forward


def _weight_specs(text_model: TextModel) -> list[tuple] | None:
    """Per layer (attn norm, mlp norm, qkv, o, gate_up, down), or None if any layer is not in a format
    decode.c reads."""
    cfg = text_model.cfg
    if text_model.embed_tokens.weight.device.type != "cpu" or cfg.head_dim % 8 or not kernels.available():
        return None
    specs = []
    for layer in text_model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        norms = (layer.input_layernorm.weight, layer.post_attention_layernorm.weight)
        if attn.qkv_proj is None or mlp.gate_up_proj is None or mlp.act is not F.silu:
            return None
        if not all(kernels.readable(w) and w.shape == (cfg.hidden_size,) for w in norms):
            return None
        linears = tuple(_linear_spec(m) for m in (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj))
        if any(s is None for s in linears):
            return None
        specs.append(norms + linears)
    return specs


class NativeDecoder:
    """Called like `TextModel` (embeds, positions, mask, cache, rows) -> hidden states; a decoding step goes
    through decode.c where it applies, anything else through the model. The table of weight and cache
    addresses is built from the model as it is when this is made (quantize before, as `pipeline.load` does)
    and bound to a cache on its first step with it; this object holds it, the model holds nothing."""

    def __init__(self, text_model: TextModel):
        self.text_model = text_model
        self.specs = _weight_specs(text_model)
        self.cache: KVCache | None = None
        self.layers = None  # ctypes array of kernels.LayerSpec, for self.cache

    def applies(self, embeds: torch.Tensor, cache: KVCache | None) -> bool:
        return (self.specs is not None and cache is not None and embeds.shape[1] == 1
                and embeds.shape[0] < UPCAST_MIN_ROWS and cache.k.dtype == torch.bfloat16
                and embeds.is_cpu and compute_dtype(embeds.dtype, embeds.device) == torch.float32
                and not torch.is_grad_enabled() and not torch.compiler.is_compiling())

    def _bind(self, cache: KVCache) -> None:
        self.layers = (kernels.LayerSpec * len(self.specs))(
            *(kernels.layer_spec(*spec, cache.k[i], cache.v[i]) for i, spec in enumerate(self.specs)))
        self.cache = cache

    def __call__(self, embeds: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None = None,
                 cache: KVCache | None = None, rows: torch.Tensor | None = None) -> torch.Tensor:
        tm = self.text_model
        if not self.applies(embeds, cache):
            return tm(embeds, positions, mask, cache, rows)
        if cache is not self.cache:
            self._bind(cache)
        x, cos, sin, mask, rows, start = tm.prepare(embeds, positions, mask, cache, rows)
        B, _, E = x.shape
        row_ids = torch.arange(rows.start, rows.stop) if isinstance(rows, slice) else rows.long().contiguous()
        pos = torch.full((B,), start) if isinstance(start, int) else start.long().contiguous()
        if int(pos.max()) >= cache.max_len:  # the native write has no bounds check of its own
            raise ValueError(f"KV cache full: a row is at position {int(pos.max())} of max_len {cache.max_len}")
        x = x.reshape(B, E).clone()  # updated in place: never the caller's embeds
        cfg = tm.cfg
        kernels.decode_layers(self.layers, x, cos.reshape(B, -1).contiguous(), sin.reshape(B, -1).contiguous(),
                              row_ids, pos, mask.reshape(B, -1).contiguous(), cfg.num_attention_heads,
                              cfg.num_key_value_heads, cfg.head_dim, cfg.intermediate_size, cache.max_len,
                              cfg.rms_norm_eps)
        cache.lengths[rows] += 1
        return tm.norm(x.view(B, 1, E))
