"""Decoding steps as one native call over all decoder layers (cpu/decode.c).

A decoding step on a CPU reads every weight once; between those reads the Python layers run ~40 small ops
each, and they run cold: the weight stream evicts the interpreter's and torch's working set from the
caches (docs/benchmarks.md has the share of a step this costs). `NativeDecoder` runs the layers of a step
in one call where the model and the cache are in formats decode.c reads (fused q/k/v and gate/up, SiLU,
bfloat16, int8 or int4 weights, a bfloat16 cache, float32 activations); everywhere else, and for prefill, it
calls the model's own forward. Embedding, positions, the mask (`TextModel.prepare`) and the final norm stay
the model's, so both paths share them.
"""

from __future__ import annotations

import ctypes

import torch
import torch.nn.functional as F

from ..model.layers import Linear, compute_dtype
from ..model.text import KVCache, TextModel
from . import cpu
from .int4 import Int4Linear
from .int8 import Int8Linear, NativeInt8Linear
from .layers import UPCAST_MIN_ROWS, FastLinear, FusedAttention, FusedSwiGLU
from .native import NativeLinear

# decode.c's structs, as qwenvl_cpu.h declares them
LinearSpec = cpu.header()[0]["qwenvl_linear"]
LayerSpec = cpu.header()[0]["qwenvl_layer"]
LINEAR_BF16, LINEAR_INT8, LINEAR_INT8_PACKED, LINEAR_INT4 = 0, 1, 2, 3


def readable(t: torch.Tensor | None, dtypes=(torch.float32, torch.bfloat16)) -> bool:
    """Whether decode.c can read `t` (None: an absent bias) as it is: a contiguous CPU tensor of `dtypes`."""
    return t is None or (t.is_cpu and t.dtype in dtypes and t.is_contiguous())


def _bias_args(b: torch.Tensor | None) -> tuple[int | None, int]:
    return (None, 0) if b is None else (b.data_ptr(), int(b.dtype == torch.bfloat16))


def linear_spec(w: torch.Tensor, scale: torch.Tensor | None = None, bias: torch.Tensor | None = None
                ) -> LinearSpec | None:
    """A projection: w bfloat16 [N, K], or int8 [N, K] or packed (cpu.pack_int8) with float32 scales [N]; bias
    float32 or bfloat16 [N] or None. None where decode.c does not read that format. The spec holds addresses
    only: the caller keeps the tensors alive."""
    if not (w.is_cpu and w.is_contiguous() and readable(bias)):
        return None
    if w.dtype == torch.bfloat16 and scale is None:
        kind, (N, K) = LINEAR_BF16, w.shape
    elif w.dtype == torch.int8 and scale is not None and readable(scale, (torch.float32,)) and w.dim() in (2, 4):
        kind, N = (LINEAR_INT8 if w.dim() == 2 else LINEAR_INT8_PACKED), scale.shape[0]
        K = w.shape[1] if w.dim() == 2 else w.shape[1] * cpu.PACK_COLS
    else:
        return None
    if bias is not None and bias.shape != (N,):
        return None
    return LinearSpec(kind, w.data_ptr(), None if scale is None else scale.data_ptr(), *_bias_args(bias), N, K)


def linear_spec_int4(m: Int4Linear) -> LinearSpec | None:
    """An Int4Linear (qweight uint8 [N, K / 2], scales float32 and zeros uint8 [N, G], bias float32 [N] or None);
    None where decode.c does not read it."""
    tensors = (m.qweight, m.scales, m.zeros) + (() if m.bias is None else (m.bias,))
    if not m.native or not all(t.is_cpu and t.is_contiguous() for t in tensors) or m.scales.dtype != torch.float32 or (
            m.bias is not None and m.bias.dtype != torch.float32):
        return None
    (N, G), K = m.scales.shape, m.qweight.shape[1] * 2
    return LinearSpec(LINEAR_INT4, m.qweight.data_ptr(), m.scales.data_ptr(),
                      None if m.bias is None else m.bias.data_ptr(), 0, N, K, m.zeros.data_ptr(), K // G)


def layer_spec(attn_norm: torch.Tensor, mlp_norm: torch.Tensor, qkv: LinearSpec, o: LinearSpec,
               gate_up: LinearSpec, down: LinearSpec, k: torch.Tensor, v: torch.Tensor) -> LayerSpec:
    """A decoder layer; k, v its cache [B_max, Hkv, S_max, D] bfloat16 (contiguous)."""
    return LayerSpec(attn_norm.data_ptr(), int(attn_norm.dtype == torch.bfloat16), mlp_norm.data_ptr(),
                     int(mlp_norm.dtype == torch.bfloat16), qkv, o, gate_up, down, k.data_ptr(), v.data_ptr())


def decode_layers(layers, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rows: torch.Tensor,
                  pos: torch.Tensor, mask: torch.Tensor, heads: int, kv_heads: int, head_dim: int,
                  intermediate: int, max_len: int, eps: float) -> None:
    """Every decoder layer for one decoding step, in one call (decode.c). `layers`: a ctypes array of LayerSpec;
    x [M, E] float32, the residual stream, updated in place; cos, sin [M, D] float32; rows, pos [M] int64:
    each row's cache row and the position its new key/value goes to; mask [M, S] additive float32 over the
    first S cached positions. The caller (NativeDecoder) checks rows and positions against the cache."""
    M, E = x.shape
    for name, t, dtype, shape in (("x", x, torch.float32, (M, E)), ("cos", cos, torch.float32, (M, head_dim)),
                                  ("sin", sin, torch.float32, (M, head_dim)), ("rows", rows, torch.long, (M,)),
                                  ("pos", pos, torch.long, (M,)), ("mask", mask, torch.float32, (M, None))):
        cpu._check(name, t, (dtype,), shape)
    S = mask.shape[-1]
    if S > max_len:
        raise ValueError(f"decode_layers: mask covers {S} positions of a cache of {max_len}")
    lib = cpu._library()
    work = torch.empty(lib.qwenvl_decode_work(M, E, heads, kv_heads, head_dim, intermediate, S))
    lib.qwenvl_decode_layers(ctypes.addressof(layers), len(layers), x.data_ptr(), M, E, heads, kv_heads, head_dim,
                             intermediate, S, max_len, eps, head_dim ** -0.5, cos.data_ptr(), sin.data_ptr(),
                             rows.data_ptr(), pos.data_ptr(), mask.data_ptr(), work.data_ptr())


def _linear_spec(mod) -> LinearSpec | None:
    if type(mod) in (Linear, FastLinear, NativeLinear):
        return linear_spec(mod.weight, None, mod.bias)
    if type(mod) is NativeInt8Linear:
        return linear_spec(mod.kernel_weight, mod.scale, mod.bias)
    if type(mod) is Int8Linear:
        return linear_spec(mod.qweight, mod.scale, mod.bias)
    if isinstance(mod, Int4Linear):
        return linear_spec_int4(mod)
    return None  # anything else (float32 weights, adapters): the model's forward


def _weight_specs(text_model: TextModel) -> list[tuple] | None:
    """Per layer (attn norm, mlp norm, qkv, o, gate_up, down), or None if any layer is not in a format
    decode.c reads."""
    cfg = text_model.cfg
    if text_model.embed_tokens.weight.device.type != "cpu" or cfg.head_dim % 8 or not cpu.available():
        return None
    specs = []
    for layer in text_model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        norms = (layer.input_layernorm.weight, layer.post_attention_layernorm.weight)
        if not isinstance(attn, FusedAttention) or not isinstance(mlp, FusedSwiGLU) or mlp.act is not F.silu:
            return None
        if not all(readable(w) and w.shape == (cfg.hidden_size,) for w in norms):
            return None
        linears = tuple(_linear_spec(m) for m in (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj))
        if any(s is None for s in linears):
            return None
        specs.append(norms + linears)
    return specs


class NativeDecoder:
    """Called like `TextModel` (embeds, positions, mask, cache, rows) -> hidden states; a decoding step goes
    through decode.c where it applies, anything else through the model. The table of weight and cache
    addresses is built from the model as it is when this is made (prepare it before, as `qwenvl.load` does)
    and bound to a cache on its first step with it; this object holds it, the model holds nothing."""

    def __init__(self, text_model: TextModel):
        self.text_model = text_model
        self.specs = _weight_specs(text_model)
        self.cache: KVCache | None = None
        self.layers = None  # ctypes array of LayerSpec, for self.cache

    def applies(self, embeds: torch.Tensor, cache: KVCache | None) -> bool:
        return (self.specs is not None and cache is not None and embeds.shape[1] == 1
                and embeds.shape[0] < UPCAST_MIN_ROWS and cache.k.dtype == torch.bfloat16
                and embeds.is_cpu and compute_dtype(embeds.dtype, embeds.device) == torch.float32
                and not torch.is_grad_enabled() and not torch.compiler.is_compiling())

    def _bind(self, cache: KVCache) -> None:
        self.layers = (LayerSpec * len(self.specs))(
            *(layer_spec(*spec, cache.k[i], cache.v[i]) for i, spec in enumerate(self.specs)))
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
        if int(row_ids.min()) < 0 or int(row_ids.max()) >= cache.batch_size or int(pos.min()) < 0:
            raise ValueError(f"cache rows {row_ids.tolist()} / positions {pos.tolist()} outside a cache of "
                             f"{cache.batch_size} rows")
        x = x.reshape(B, E).clone()  # updated in place: never the caller's embeds
        cfg = tm.cfg
        decode_layers(self.layers, x, cos.reshape(B, -1).contiguous(), sin.reshape(B, -1).contiguous(),
                              row_ids, pos, mask.reshape(B, -1).contiguous(), cfg.num_attention_heads,
                              cfg.num_key_value_heads, cfg.head_dim, cfg.intermediate_size, cache.max_len,
                              cfg.rms_norm_eps)
        cache.lengths[rows] += 1
        return tm.norm(x.view(B, 1, E))
