"""Qwen2.5-VL: the vision tower, the decoder and the LM head, joined by placing vision features at the
image/video pad tokens. Reference: transformers 4.51.3 Qwen2_5_VLForConditionalGeneration.

`forward` takes the tensors a transformers processor produces (same names and layouts) and returns
an object with `.logits`. Positions are computed from those inputs by a pure function
(`mrope_positions`) unless the caller passes them; nothing about a request is stored on the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import QwenVLConfig
from .rope import mrope_positions
from .layers import Linear
from .text import KVCache, Packed, TextModel, causal_padding_mask
from .vision_qwen2 import vision_tower


@dataclass
class Output:
    logits: torch.Tensor          # [B, L, vocab], or [n, vocab] at forward(logits_at=...)
    positions: torch.Tensor       # [3, B, L]
    rope_deltas: torch.Tensor     # [B]: position of decode step n = n + delta


class QwenVL(nn.Module):
    def __init__(self, config: QwenVLConfig):
        super().__init__()
        self.config = config
        self.visual = vision_tower(config.vision)  # Qwen2.5-VL's, or Qwen2-VL's (model_type qwen2_vl)
        self.language_model = TextModel(config.text)
        self.lm_head = Linear(config.text.hidden_size, config.text.vocab_size, bias=False)
        if config.text.tie_word_embeddings:
            self.lm_head.weight = self.language_model.embed_tokens.weight

    # ------------------------------------------------------------------ stages

    def embed(self, input_ids: torch.Tensor, pixel_values=None, image_grid_thw=None, pixel_values_videos=None,
              video_grid_thw=None, image_embeds=None, video_embeds=None) -> torch.Tensor:
        """Token embeddings with the vision features scattered, in order, into the pad tokens.
        Precomputed `image_embeds`/`video_embeds` (e.g. from a cache) skip the tower."""
        x = self.language_model.embed_tokens(input_ids)
        cfg = self.config
        for kind, token, pixels, grid, feats in (
            ("image", cfg.image_token_id, pixel_values, image_grid_thw, image_embeds),
            ("video", cfg.video_token_id, pixel_values_videos, video_grid_thw, video_embeds),
        ):
            mask = input_ids == token
            n_tokens = int(mask.sum())
            if feats is None and pixels is None:
                if n_tokens:
                    raise ValueError(f"input_ids hold {n_tokens} {kind} tokens but no {kind} pixels were given")
                continue
            if feats is None:
                if grid is None:
                    raise ValueError(f"{kind} pixels were given without {kind}_grid_thw")
                feats = self.visual(pixels, grid)
            if feats.shape[0] != n_tokens:
                raise ValueError(f"{kind} features and {kind} tokens do not match: {n_tokens} tokens in input_ids, "
                                 f"{feats.shape[0]} features from the grids")
            x = x.masked_scatter(mask[..., None], feats.to(x.dtype))
        return x

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)

    # ------------------------------------------------------------------ full forward

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_grid_thw: torch.Tensor | None = None,
        second_per_grid_ts: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        *,
        image_embeds: torch.Tensor | None = None,
        video_embeds: torch.Tensor | None = None,
        packed: Packed | None = None,
        logits_at: torch.Tensor | None = None,
    ) -> Output:
        """What training adds to the inference call: `image_embeds`/`video_embeds`, the tower's features
        already computed (training runs it once for all media of a micro-batch); `packed`, samples laid end
        to end in one row, each attending causally to itself only (in place of `attention_mask`); and
        `logits_at`, a bool mask like input_ids: logits only there, [n, vocab], so the LM head (the largest
        matmul at small sizes) never runs on prompt or padding tokens."""
        if input_ids.ndim == 1:
            input_ids = input_ids[None]
        if packed is not None and attention_mask is not None:
            raise ValueError("pass attention_mask or packed, not both: a packed row has no padding mask")
        deltas = None
        if positions is None:
            positions, deltas = mrope_positions(input_ids, self.config, attention_mask, image_grid_thw,
                                                video_grid_thw, second_per_grid_ts)
        positions = positions.to(input_ids.device)
        x = self.embed(input_ids, pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw,
                       image_embeds, video_embeds)
        mask = packed if attention_mask is None else causal_padding_mask(attention_mask.to(input_ids.device))
        hidden = self.language_model(x, positions, mask)
        if deltas is None:
            deltas = positions.max(0).values.max(-1).values + 1 - input_ids.shape[1]
        return Output(self.logits(hidden if logits_at is None else hidden[logits_at]), positions, deltas)

    @property
    def device(self) -> torch.device:
        return self.language_model.embed_tokens.weight.device  # the LM head may be quantized (qwenvl.fast)

    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        p = self.language_model.embed_tokens.weight
        return KVCache(self.config.text, batch_size, max_len, p.dtype, p.device)
