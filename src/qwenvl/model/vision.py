"""The Qwen2.5-VL vision tower: native-resolution ViT with window attention and a 2x2 patch merger.

Shapes: N patches (rows of pixel_values, C*T*P*P = 3*2*14*14 = 1176 values each), E hidden size,
H heads, D head dim. Patches arrive grouped by merge unit (2x2 neighbours consecutive), as the
processor lays them out. Reference: transformers 4.51.3 Qwen2_5_VisionTransformerPretrainedModel.

Attention never crosses an image or a temporal patch:
- window layers attend within windows of window_size/patch_size patches square (8x8 for 112 px),
  tiled over the merged grid; windows at the right/bottom edges are smaller (no padding tokens);
- layers in `fullatt_block_indexes` attend within one temporal slice (t) of one image or video,
  so their cost is linear in the number of frames.
Instead of one attention call per window, windows of equal size are batched: one call per run of
consecutive equal windows, on the rows where they lie (or, past MAX_RUNS runs, one per size, gathered).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from ..config import VisionConfig
from .layers import Linear, RMSNorm, SwiGLU, apply_rope, compute_dtype, rope_inv_freq


@dataclass(frozen=True)
class Segments:
    """A partition of the (permuted) patch sequence into attention groups: `groups` holds one index tensor
    [n, length] per distinct length; `runs` the same segments as maximal runs of consecutive segments of
    equal length, (start, count, length) each."""

    groups: tuple[torch.Tensor, ...]
    runs: tuple[tuple[int, int, int], ...]

    @staticmethod
    def from_lengths(lengths: list[int]) -> "Segments":
        starts, by_len, runs = 0, {}, []
        for n in lengths:
            by_len.setdefault(n, []).append(starts)
            if runs and runs[-1][2] == n:
                runs[-1][1] += 1
            else:
                runs.append([starts, 1, n])
            starts += n
        groups = tuple(torch.tensor(s).view(-1, 1) + torch.arange(n) for n, s in by_len.items())
        return Segments(groups, tuple(map(tuple, runs)))


@dataclass(frozen=True)
class Layout:
    """Everything about a list of grids that does not depend on the weights; cached per grid list."""

    window_index: torch.Tensor   # [N / merge_unit] merge units in window order
    reverse_index: torch.Tensor  # inverse permutation, restores the processor's order after the merger
    windows: Segments
    frames: Segments
    rope_hw: torch.Tensor        # [N, 2] (row, col) of each patch, in window order


def vision_layout(grids: tuple[tuple[int, int, int], ...], merge: int, window: int) -> Layout:
    """`window` is the window side in merged units (window_size // merge // patch_size)."""
    # The cached tensors outlive the call: build them as normal tensors even under inference_mode, or a
    # later training step that reuses them fails ("inference tensors cannot be saved for backward").
    with torch.inference_mode(False):
        return _vision_layout(grids, merge, window)


@lru_cache(maxsize=64)
def _vision_layout(grids: tuple[tuple[int, int, int], ...], merge: int, window: int) -> Layout:
    window_index, window_lens, frame_lens, rope = [], [], [], []
    offset = 0
    for t, h, w in grids:
        gh, gw = h // merge, w // merge
        index = torch.arange(t * gh * gw).view(t, gh, gw)
        nh, nw = -(-gh // window), -(-gw // window)
        for ti in range(t):
            for wy in range(nh):
                for wx in range(nw):
                    cell = index[ti, wy * window:(wy + 1) * window, wx * window:(wx + 1) * window]
                    window_index.append(cell.flatten() + offset)
                    window_lens.append(cell.numel() * merge * merge)
        frame_lens += [h * w] * t
        # (row, col) of every patch, in the processor's merge-unit order
        rows = torch.arange(h).view(gh, merge, 1, 1).expand(gh, merge, gw, merge)
        cols = torch.arange(w).view(1, 1, gw, merge).expand(gh, merge, gw, merge)
        hw = torch.stack([rows.permute(0, 2, 1, 3).flatten(), cols.permute(0, 2, 1, 3).flatten()], dim=-1)
        rope.append(hw.repeat(t, 1))
        offset += t * gh * gw
    window_index = torch.cat(window_index)
    reverse = torch.empty_like(window_index)
    reverse[window_index] = torch.arange(len(window_index))
    unit = merge * merge
    rope_hw = torch.cat(rope).view(-1, unit, 2)[window_index].view(-1, 2)
    return Layout(window_index, reverse, Segments.from_lengths(window_lens), Segments.from_lengths(frame_lens),
                  rope_hw)


# Up to this many runs, attention runs on each run of equal-length segments in place (one call per run);
# beyond (long videos: a few runs per frame), on each length's gathered segments (one call per length).
MAX_RUNS = 64


def segment_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segments: Segments) -> torch.Tensor:
    """Attention within each segment. q/k/v [N, H, D] -> [N, H, D]."""
    if len(segments.runs) == 1:
        return _attend_run(q, k, v, *segments.runs[0][1:])
    out = torch.empty_like(q)
    if len(segments.runs) <= MAX_RUNS:
        # a run is a contiguous block of rows: no gather and scatter of q/k/v
        for start, count, length in segments.runs:
            end = start + count * length
            out[start:end] = _attend_run(q[start:end], k[start:end], v[start:end], count, length)
        return out
    for idx in segments.groups:
        # [n, len, H, D] -> [n, H, len, D]
        qs, ks, vs = (x[idx].transpose(1, 2) for x in (q, k, v))
        o = F.scaled_dot_product_attention(qs, ks, vs)
        out[idx] = o.transpose(1, 2)
    return out


def _attend_run(q, k, v, count: int, length: int) -> torch.Tensor:
    """Attention within each of `count` consecutive segments of `length` rows: [count * length, H, D]."""
    qs, ks, vs = (x.view(count, length, *x.shape[1:]).transpose(1, 2) for x in (q, k, v))
    return F.scaled_dot_product_attention(qs, ks, vs).transpose(1, 2).reshape(q.shape)


class VisionAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = Linear(dim, 3 * dim, bias=True)
        self.proj = Linear(dim, dim, bias=True)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, segments: Segments) -> torch.Tensor:
        N = x.shape[0]
        q, k, v = self.qkv(x).view(N, 3, self.num_heads, -1).unbind(1)  # each [N, H, D]
        # RoPE in float32, as the reference, then back to the compute dtype.
        q = apply_rope(q.float(), cos, sin).to(v.dtype)
        k = apply_rope(k.float(), cos, sin).to(v.dtype)
        return self.proj(segment_attention(q, k, v, segments).reshape(N, -1))


class VisionBlock(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.norm1 = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.norm2 = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = VisionAttention(cfg.hidden_size, cfg.num_heads)
        self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size, bias=True, act=cfg.hidden_act)

    def forward(self, x, cos, sin, segments):
        x = x + self.attn(self.norm1(x), cos, sin, segments)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nn.Module):
    """RMSNorm each patch, concatenate the 4 patches of a 2x2 unit, Linear -> GELU -> Linear."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        dim = cfg.hidden_size * cfg.merge_unit
        self.ln_q = RMSNorm(cfg.hidden_size, 1e-6)
        self.mlp = nn.Sequential(Linear(dim, dim), nn.GELU(), Linear(dim, cfg.out_hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.ln_q(x).view(-1, self.mlp[0].in_features))


class PatchEmbed(nn.Module):
    """The Conv3d with kernel = stride = (2, 14, 14) is a Linear over the flattened patch."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.proj = Linear(cfg.patch_dim, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def vision_inv_freq(cfg: VisionConfig, device: torch.device | str | None = None) -> torch.Tensor:
    """The tower's 2-D rotary frequencies: half the head dim for the patch's row, half for its column."""
    return rope_inv_freq(cfg.head_dim // 2, 10000.0, device)


class VisionTransformer(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.blocks = nn.ModuleList(VisionBlock(cfg) for _ in range(cfg.depth))
        self.merger = PatchMerger(cfg)
        self.register_buffer("inv_freq", vision_inv_freq(cfg), persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.merger.ln_q.weight.dtype  # a norm: never quantized, unlike the projections

    def layout(self, grid_thw: torch.Tensor) -> Layout:
        cfg = self.cfg
        grids = tuple(tuple(int(v) for v in g) for g in grid_thw.tolist())
        for t, h, w in grids:
            if h % cfg.spatial_merge_size or w % cfg.spatial_merge_size:
                raise ValueError(f"grid {(t, h, w)}: height and width must be multiples of {cfg.spatial_merge_size}")
        return vision_layout(grids, cfg.spatial_merge_size, cfg.window_size // cfg.spatial_merge_size // cfg.patch_size)

    def rope(self, rope_hw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = rope_hw.to(self.inv_freq.device).float()[..., None] * self.inv_freq  # [N, 2, D/4]
        freqs = freqs.flatten(1)  # rows' then columns' frequencies: [N, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]  # [N, 1, D] broadcast over heads
        return emb.cos(), emb.sin()

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """pixel_values [N, 1176], grid_thw [num_items, 3] -> embeddings [N / 4, out_hidden_size]."""
        n_expected = int(grid_thw.prod(-1).sum())
        if pixel_values.shape[0] != n_expected:
            raise ValueError(f"pixel_values has {pixel_values.shape[0]} patches, the grids {grid_thw.tolist()} "
                             f"need {n_expected}")
        layout = self.layout(grid_thw)
        device = pixel_values.device
        unit = self.cfg.merge_unit
        # half-precision weights on a CPU without half-precision GEMMs: float32 activations (layers.compute_dtype)
        x = self.patch_embed(pixel_values.to(compute_dtype(self.dtype, device)))
        N = x.shape[0]
        # Reorder whole merge units into window order; the merger's 2x2 grouping stays intact.
        x = x.view(N // unit, unit, -1)[layout.window_index.to(device)].view(N, -1)
        cos, sin = self.rope(layout.rope_hw)
        full = set(self.cfg.fullatt_block_indexes)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, layout.frames if i in full else layout.windows)
        return self.merger(x)[layout.reverse_index.to(device)].to(self.dtype)
