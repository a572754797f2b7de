"""The Qwen2-VL vision tower. Reference: transformers 4.51.3 Qwen2VisionTransformerPretrainedModel.

Same patch embedding, 2-D rotary positions, attention and 2x2 merge as the Qwen2.5-VL tower (vision.py);
it differs in the blocks and the merger:
- LayerNorm (with bias) instead of RMSNorm, before attention, the MLP and the merger;
- the MLP is fc1 -> QuickGELU -> fc2 (mlp_ratio x wider), not a gated SwiGLU;
- no window attention: every block attends within one temporal slice of one image or video.
With windows as large as a frame the shared layout has one window per frame in the processor's order
(an identity permutation), so the Qwen2.5 forward runs unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import VisionConfig
from .layers import ACTIVATIONS, Linear
from .vision import Layout, PatchEmbed, VisionAttention, VisionTransformer, vision_inv_freq, vision_layout

# window side (merged units) that no grid reaches: one window per frame
WHOLE_FRAME = 1 << 30


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm that also takes activations of another floating dtype than its parameters (half-precision
    weights, float32 activations; layers.compute_dtype); same parameters and state dict."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.weight, self.bias
        if w.dtype != x.dtype:
            w, b = w.to(x.dtype), b.to(x.dtype)
        return F.layer_norm(x, self.normalized_shape, w, b, self.eps)


class VisionMlp(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str):
        super().__init__()
        self.fc1 = Linear(dim, hidden)
        self.fc2 = Linear(hidden, dim)
        self.act = ACTIVATIONS[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Qwen2VisionBlock(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.norm1 = LayerNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.norm2 = LayerNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.attn = VisionAttention(cfg.hidden_size, cfg.num_heads)
        self.mlp = VisionMlp(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act)

    def forward(self, x, cos, sin, segments):
        x = x + self.attn(self.norm1(x), cos, sin, segments)
        return x + self.mlp(self.norm2(x))


class Qwen2PatchMerger(nn.Module):
    """LayerNorm each patch, concatenate the 4 patches of a 2x2 unit, Linear -> GELU -> Linear."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        dim = cfg.hidden_size * cfg.merge_unit
        self.ln_q = LayerNorm(cfg.hidden_size, eps=1e-6)
        self.mlp = nn.Sequential(Linear(dim, dim), nn.GELU(), Linear(dim, cfg.out_hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.ln_q(x).view(-1, self.mlp[0].in_features))


class Qwen2VisionTransformer(VisionTransformer):
    """VisionTransformer's forward, rotary table and dtype with the Qwen2-VL blocks, merger and layout."""

    def __init__(self, cfg: VisionConfig):
        nn.Module.__init__(self)  # not VisionTransformer's: it would build Qwen2.5 blocks first
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.blocks = nn.ModuleList(Qwen2VisionBlock(cfg) for _ in range(cfg.depth))
        self.merger = Qwen2PatchMerger(cfg)
        self.register_buffer("inv_freq", vision_inv_freq(cfg), persistent=False)

    def layout(self, grid_thw: torch.Tensor) -> Layout:
        merge = self.cfg.spatial_merge_size
        grids = tuple(tuple(int(v) for v in g) for g in grid_thw.tolist())
        for t, h, w in grids:
            if h % merge or w % merge:
                raise ValueError(f"grid {(t, h, w)}: height and width must be multiples of {merge}")
        return vision_layout(grids, merge, WHOLE_FRAME)


def vision_tower(cfg: VisionConfig) -> VisionTransformer:
    """The tower of the checkpoint's family."""
    if cfg.model_type == "qwen2_vl":
        return Qwen2VisionTransformer(cfg)
    return VisionTransformer(cfg)
