"""Fused projections for inference: the decoder's q/k/v into one Linear, gate/up into one in the decoder and in
the vision tower (whose q/k/v the checkpoint already fuses).

One matrix product per group instead of three (two): fewer calls, casts and reads of the activation per
token, and in the tower one wide product where the narrow ones run below the GEMM's usual rate
(docs/benchmarks.md). The checkpoint format, training and LoRA keep the separate projections: a fused
module's state dict is written and read under the original names (q_proj, k_proj, v_proj; gate_proj,
up_proj), split and joined along the output rows.
"""

from __future__ import annotations

import torch
from torch import nn

from ..model.layers import Linear, SwiGLU
from ..model.mapped import release_pages
from ..model.text import Attention
from .int4 import Int4Linear
from .layers import FusedAttention, FusedSwiGLU

# fused module name -> the modules it replaces, in the order their output rows are stacked
GROUPS = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
FUSED = {Attention: (FusedAttention, "qkv_proj"), SwiGLU: (FusedSwiGLU, "gate_up_proj")}


def fuse_linears(parts: list[nn.Linear]) -> Linear:
    weight = torch.cat([p.weight.detach() for p in parts])
    bias = None if parts[0].bias is None else torch.cat([p.bias.detach() for p in parts])
    with torch.device("meta"):
        fused = Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    fused.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        fused.bias = nn.Parameter(bias, requires_grad=False)
    return fused


def split_rows(owner: nn.Module) -> list[int]:
    """The output rows of each part of `owner`'s fused projection."""
    if isinstance(owner, Attention):
        q, kv = owner.n_heads * owner.head_dim, owner.n_kv * owner.head_dim
        return [q, kv, kv]
    rows = owner.down_proj.in_features
    return [rows, rows]


def _fused_name(owner: nn.Module) -> str:
    return "qkv_proj" if isinstance(owner, Attention) else "gate_up_proj"


def _save_parts(owner, state: dict, prefix: str, local_metadata) -> None:
    """state_dict hook: `<prefix>qkv_proj.<leaf>` -> `<prefix>q_proj.<leaf>`, ... (rows split)."""
    fused_name = _fused_name(owner)
    for key in [k for k in state if k.startswith(f"{prefix}{fused_name}.")]:
        leaf = key[len(prefix) + len(fused_name) + 1:]
        t = state.pop(key)
        for part, piece in zip(GROUPS[fused_name], t.split(split_rows(owner), dim=0)):
            state[f"{prefix}{part}.{leaf}"] = piece


def _load_parts(owner, state: dict, prefix: str, *args) -> None:
    """load_state_dict pre-hook: the separate projections' tensors joined into the fused module's."""
    fused_name = _fused_name(owner)
    parts = GROUPS[fused_name]
    leaves = {k[len(prefix) + len(parts[0]) + 1:] for k in state if k.startswith(f"{prefix}{parts[0]}.")}
    for leaf in leaves:
        keys = [f"{prefix}{p}.{leaf}" for p in parts]
        if all(k in state for k in keys):
            state[f"{prefix}{fused_name}.{leaf}"] = torch.cat([state.pop(k) for k in keys])


def fuse_module(owner: nn.Module) -> bool:
    """Fuse one Attention or SwiGLU in place (its class becomes the fused one); False where its projections are
    not all plain Linears or all Int4Linears of one group size (adapters, mixed formats)."""
    fused_cls, fused_name = FUSED[type(owner)]
    names = GROUPS[fused_name]
    parts = [getattr(owner, n) for n in names]
    if all(type(p) in (Linear, nn.Linear) for p in parts):
        fused = fuse_linears(parts)
    elif all(isinstance(p, Int4Linear) for p in parts):
        fused = Int4Linear.cat(parts)
    else:
        fused = None
    if fused is None:
        return False
    for n, p in zip(names, parts):
        delattr(owner, n)
        for t in (getattr(p, "weight", None), p.bias):
            if t is not None:
                release_pages(t)
    owner.__class__ = fused_cls
    setattr(owner, fused_name, fused)
    owner._register_state_dict_hook(_save_parts)
    owner._register_load_state_dict_pre_hook(_load_parts, with_module=True)
    return True


def fuse_projections(model: nn.Module) -> nn.Module:
    """In place, for every decoder layer and vision block of `model` (a QwenVL, or a TextModel). Memory-mapped
    source weights are released as they are replaced, so peak memory stays near the weights' bytes."""
    for owner in [m for m in model.modules() if type(m) in FUSED]:
        fuse_module(owner)
    return model
