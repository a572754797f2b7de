"""AWQ checkpoints (AutoAWQ's GEMM layout, e.g. Qwen/Qwen2.5-VL-7B-Instruct-AWQ) loaded with their weights
kept 4-bit (`Int4Linear`).

The format, per quantized Linear `x` of in_features K and out_features N, group size g (config.json
`quantization_config`: {"quant_method": "awq", "bits": 4, "group_size": g, "zero_point": true,
"version": "gemm", "modules_to_not_convert": [...]}):
- `x.qweight` int32 [K, N / 8]: 32-bit word j of input row k holds 8 4-bit values, nibble i (bits 4i..4i+3)
  being output column 8j + AWQ_ORDER[i], AWQ_ORDER = 0, 2, 4, 6, 1, 3, 5, 7;
- `x.qzeros` int32 [K / g, N / 8]: the zero points, packed the same way;
- `x.scales` float16 [K / g, N];
- `x.bias` float16 [N] where the Linear has one.
Weight (nn.Linear layout [N, K]): W[n, k] = (q[k, n] - z[k // g, n]) * s[k // g, n].
Modules in `modules_to_not_convert` (the vision tower in the Qwen releases) and the LM head keep plain
floating-point `weight`s; a Linear is 4-bit exactly where the checkpoint holds its `qweight`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..model.mapped import MappedSafetensors, release_pages
from ..model.qwen25vl import QwenVL
from ..model.weights import init_buffers, our_key, weight_files
from .int4 import Int4Linear

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
AWQ_PARTS = ("qweight", "qzeros", "scales")


def unpack_awq(packed: torch.Tensor) -> torch.Tensor:
    """int32 [R, C / 8] in AWQ's order -> uint8 [R, C], the values in column order."""
    R, C8 = packed.shape
    shifts = torch.arange(0, 32, 4, dtype=torch.int32)
    nibbles = (packed.to(torch.int32)[..., None] >> shifts) & 0xF  # [R, C/8, 8], nibble i
    out = torch.empty_like(nibbles)
    out[..., list(AWQ_ORDER)] = nibbles  # nibble i is column AWQ_ORDER[i] of its group of 8
    return out.view(R, C8 * 8).to(torch.uint8)


def read_quantization(path: Path) -> dict | None:
    """The AWQ settings of a checkpoint directory, checked; None when it is not quantized."""
    f = Path(path) / "config.json"
    if not f.exists():
        return None
    try:
        qc = json.loads(f.read_text()).get("quantization_config")
    except json.JSONDecodeError:
        return None  # config.py reports the bad JSON
    if not qc:
        return None
    method = str(qc.get("quant_method", "")).lower()
    if method != "awq":
        raise ValueError(f"{f}: quantization_config.quant_method is {qc.get('quant_method')!r}; only 'awq' "
                         "(AutoAWQ GEMM layout) checkpoints are supported")
    if qc.get("bits", 4) != 4:
        raise ValueError(f"{f}: quantization_config.bits is {qc['bits']}, only 4-bit AWQ is supported")
    version = str(qc.get("version", "gemm")).lower()
    if version != "gemm":
        raise ValueError(f"{f}: quantization_config.version is {qc['version']!r}, only AWQ's 'gemm' layout is supported")
    if qc.get("zero_point", True) is not True:
        raise ValueError(f"{f}: quantization_config.zero_point is {qc['zero_point']!r}, only zero_point true is supported")
    g = qc.get("group_size", 128)
    if not isinstance(g, int) or g <= 0:
        raise ValueError(f"{f}: quantization_config.group_size must be a positive integer, got {g!r} "
                         "(per-channel AWQ, group_size -1, is not supported)")
    return {"group_size": g, "modules_to_not_convert": list(qc.get("modules_to_not_convert") or [])}


def int4_from_awq(name: str, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
                  bias: torch.Tensor | None, group_size: int, in_features: int, out_features: int,
                  dtype: torch.dtype) -> Int4Linear:
    """One AWQ Linear -> Int4Linear, its shapes checked against the model's (K, N) and the group size."""
    K, N, g = in_features, out_features, group_size
    want = {"qweight": (K, N // 8), "qzeros": (K // g, N // 8), "scales": (K // g, N)}
    for part, t in zip(AWQ_PARTS, (qweight, qzeros, scales)):
        if K % g or N % 8 or tuple(t.shape) != want[part]:
            raise ValueError(f"{name}.{part}: shape {tuple(t.shape)} does not match the AWQ layout for a "
                             f"{K} -> {N} Linear with group size {g} (expected {want[part]})")
    if qweight.dtype != torch.int32 or qzeros.dtype != torch.int32:
        raise ValueError(f"{name}: qweight/qzeros must be int32, got {qweight.dtype}/{qzeros.dtype}")
    q = unpack_awq(qweight).t()                    # [N, K]
    z = unpack_awq(qzeros).t()                     # [N, K / g]
    s = scales.float().t()                         # [N, K / g]
    return Int4Linear(q.contiguous(), s.contiguous(), z.contiguous(), bias, dtype)


def load_awq_model(path: Path, config, dtype: torch.dtype, device, quant: dict):
    """model.weights.load_model for an AWQ checkpoint: float tensors as load_model reads them, every Linear
    with a `qweight` as an Int4Linear (on the CPU; other devices get the Int4Linear moved there)."""
    files = weight_files(path)
    with torch.device("meta"):
        model = QwenVL(config)
    params = dict(model.named_parameters())
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    tied = config.text.tie_word_embeddings
    g = quant["group_size"]

    state, parts, unexpected = {}, {}, []
    by_file: dict[Path, list[str]] = {}
    for name, f in files.items():
        by_file.setdefault(f, []).append(name)
    for f, names in by_file.items():
        try:
            handle = MappedSafetensors(f)
        except Exception as e:
            raise ValueError(f"{f.name} is not a readable safetensors file: {e}") from None
        with handle:
            for name in names:
                key = our_key(name)
                module, _, leaf = (key or "").rpartition(".")
                if key is not None and leaf in AWQ_PARTS and module in linears:
                    parts.setdefault(module, {})[leaf] = handle.get_tensor(name)
                    continue
                if key is None or key not in params:
                    unexpected.append(name)
                    continue
                if tied and key == "lm_head.weight":
                    continue
                t = handle.get_tensor(name)
                if key == "visual.patch_embed.proj.weight" and t.ndim == 5:
                    t = t.reshape(t.shape[0], -1)
                if tuple(t.shape) != tuple(params[key].shape):
                    raise ValueError(f"{name}: shape {tuple(t.shape)} does not match the config's "
                                     f"{tuple(params[key].shape)}")
                tdtype = torch.bfloat16 if dtype == torch.float16 and key.startswith("visual.") else dtype
                state[key] = t.to(device=device, dtype=tdtype)
    if unexpected:
        raise ValueError(f"{path}: unexpected tensors not in a Qwen-VL model: " + ", ".join(sorted(unexpected)[:10])
                         + (" ..." if len(unexpected) > 10 else ""))

    for module, p in sorted(parts.items()):
        missing = [k for k in AWQ_PARTS if k not in p]
        if missing:
            raise ValueError(f"{path}: AWQ module {module} lacks " + ", ".join(f"{module}.{k}" for k in missing))
        lin = linears[module]
        bias_key = module + ".bias"
        bias = state.pop(bias_key, None)
        if lin.bias is not None and bias is None:
            raise ValueError(f"{path}: missing tensors: {bias_key}")
        layer = int4_from_awq(module, p["qweight"], p["qzeros"], p["scales"], bias, g, lin.in_features,
                              lin.out_features, dtype)
        for t in p.values():
            release_pages(t)
        parent, _, attr = module.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, layer.to(device))

    expected = {k for k in dict(model.named_parameters()) if not (tied and k == "lm_head.weight")}
    missing = sorted(expected - state.keys())
    if missing:
        raise ValueError(f"{path}: missing tensors: " + ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""))
    model.load_state_dict(state, strict=False, assign=True)
    if tied:
        if isinstance(model.lm_head, Int4Linear):
            raise ValueError(f"{path}: tie_word_embeddings with a 4-bit lm_head is not a valid AWQ checkpoint")
        model.lm_head.weight = model.language_model.embed_tokens.weight
    init_buffers(model, device)
    return model.eval()
