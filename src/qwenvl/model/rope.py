"""MRoPE positions: a pure function of the prompt, its media grids and the video timing.

Rules (those of the Qwen release, transformers 4.51.3 and vLLM), each pinned by a test:
- text advances by one per token on all three rows (time, height, width);
- a vision span starts at the current position; an image has t-index 0; a video's t-index for
  temporal grid k is floor(k * second_per_grid_t * tokens_per_second), multiplied first and floored
  last (in float32, as the reference) so that 0.5 s grids do not collapse to 0; Qwen2-VL
  (model_type qwen2_vl) uses k itself and ignores the timing;
- h/w are the row and column in the merged (2x2) grid;
- text after a vision span resumes at max(all three rows so far) + 1, not at start + token count;
- padding (attention_mask == 0) is skipped; pad columns get position 1 like the reference;
- delta = max(position) + 1 - padded length: decoding token n (0-based, counted in the padded
  sequence) sits at n + delta on all three rows.
"""

from __future__ import annotations

import torch

from ..config import QwenVLConfig


def mrope_positions(
    input_ids: torch.Tensor,
    config: QwenVLConfig,
    attention_mask: torch.Tensor | None = None,
    image_grid_thw: torch.Tensor | None = None,
    video_grid_thw: torch.Tensor | None = None,
    second_per_grid_ts: torch.Tensor | list[float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (positions [3, B, L] long, delta [B] long). Grids are consumed in order across the batch."""
    if input_ids.ndim == 1:
        input_ids = input_ids[None]
    B, L = input_ids.shape
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    merge = config.vision.spatial_merge_size
    tps = config.vision.tokens_per_second
    frame_index = config.model_type == "qwen2_vl"  # Qwen2-VL: a video's t-index is the temporal grid index
    img = image_grid_thw.tolist() if image_grid_thw is not None else []
    vid = video_grid_thw.tolist() if video_grid_thw is not None else []
    if second_per_grid_ts is None:
        spg = [1.0] * len(vid)  # the reference's default when the timing is unknown
    else:
        spg = torch.as_tensor(second_per_grid_ts, dtype=torch.float32).flatten().tolist()
    if len(spg) < len(vid):
        raise ValueError(f"second_per_grid_ts has {len(spg)} entries for {len(vid)} videos")
    n_img = n_vid = 0

    positions = torch.ones(3, B, L, dtype=torch.long)
    deltas = torch.zeros(B, dtype=torch.long)
    for b in range(B):
        keep = attention_mask[b].bool()
        ids = input_ids[b][keep].tolist()
        chunks: list[torch.Tensor] = []
        next_pos = 0  # max over all rows so far + 1
        i = 0
        media = (config.image_token_id, config.video_token_id)
        while i < len(ids):
            j = next((k for k in range(i, len(ids)) if ids[k] in media), len(ids))
            if j > i:  # text, including the <|vision_start|> before a span
                chunks.append(torch.arange(next_pos, next_pos + j - i).expand(3, -1))
                next_pos += j - i
                i = j
            if i >= len(ids):
                break
            if ids[i] == config.image_token_id:
                if n_img >= len(img):
                    raise ValueError(f"more images in input_ids than in image_grid_thw ({len(img)})")
                t, h, w = img[n_img]
                n_img += 1
                t_index = torch.zeros(t, dtype=torch.long)
            else:
                if n_vid >= len(vid):
                    raise ValueError(f"more videos in input_ids than in video_grid_thw ({len(vid)})")
                t, h, w = vid[n_vid]
                step = torch.tensor(spg[n_vid], dtype=torch.float32)
                n_vid += 1
                if frame_index:
                    t_index = torch.arange(t)
                else:
                    # float32, range * seconds first, then * tokens_per_second, then floor: the reference's order
                    t_index = (torch.arange(t) * step * tps).long()
            h, w = h // merge, w // merge
            block = torch.stack([
                t_index.view(-1, 1, 1).expand(t, h, w).flatten(),
                torch.arange(h).view(1, -1, 1).expand(t, h, w).flatten(),
                torch.arange(w).view(1, 1, -1).expand(t, h, w).flatten(),
            ]) + next_pos
            chunks.append(block)
            next_pos = int(block.max()) + 1
            i += t * h * w
        if chunks:
            pos = torch.cat(chunks, dim=1)
            if pos.shape[1] != len(ids):
                raise ValueError(f"row {b}: vision token spans do not match the grids "
                                 f"({pos.shape[1]} positions for {len(ids)} tokens)")
            positions[:, b, keep] = pos
            deltas[b] = int(pos.max()) + 1 - L
        else:
            deltas[b] = 1 - L
    return positions, deltas


def decode_positions(lengths: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """Positions [3, B, 1] for the next token of each row, given its sequence length so far."""
    return (lengths + deltas).view(1, -1, 1).expand(3, -1, 1)


def mrope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor, section: tuple[int, ...],
                  dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [B, L, head_dim] for positions [3, B, L]: frequency band i of `section` uses row i."""
    freqs = positions.float()[..., None] * inv_freq.float()  # [3, B, L, D/2]
    parts = freqs.split(list(section), dim=-1)
    freqs = torch.cat([p[i] for i, p in enumerate(parts)], dim=-1)  # [B, L, D/2]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)
