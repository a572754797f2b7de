"""The network as training calls it, and the losses.

`Policy` calls the model's own forward (QwenVL.forward) with what training adds: one vision-tower call
per micro-batch for all its images and video frames (a 4-patch dummy when there are none, so that every
rank runs the same collectives under FSDP and the tower's parameters always take part in the graph), the
rows laid end to end as packed causal segments, and logits at the supervised tokens only: the LM head
never runs on prompt or padding tokens.

Losses are sums; the loop divides them by the number of supervised tokens (SFT) or pairs (DPO) of
the whole optimizer step over every rank, so gradient accumulation, packing and data parallelism all
give the same token-level mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..model.text import Packed
from .pack import IGNORE, TrainBatch


class Policy(nn.Module):
    """The model's own forward, called as training needs it (see the module docstring)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, targets, positions, segments, pixel_values, grid_thw, n_image_tokens: int):
        """-> (log p(target) [n], sample index [n]) for the n supervised tokens of the micro-batch."""
        m, vision = self.model, self.model.config.vision
        dummy = pixel_values is None
        if dummy:
            pixel_values = torch.zeros(vision.merge_unit, vision.patch_dim, device=input_ids.device)
            grid_thw = torch.tensor([[1, vision.spatial_merge_size, vision.spatial_merge_size]])
        feats = m.visual(pixel_values, grid_thw)  # [n_media_tokens, E]: images first, then videos
        # The rows laid end to end as one: every sample (and each row's padding) is its own causal segment.
        B, L = input_ids.shape
        sel = targets != IGNORE
        out = m(input_ids.reshape(1, B * L), positions=positions.reshape(3, 1, B * L),
                image_embeds=None if dummy else feats[:n_image_tokens],
                video_embeds=None if dummy else feats[n_image_tokens:],
                packed=Packed(segment_lengths(segments)), logits_at=sel.reshape(1, B * L))
        logp = -F.cross_entropy(out.logits.float(), targets[sel], reduction="none")
        if dummy:
            logp = logp + 0.0 * feats.sum()   # the dummy's zero gradient keeps the tower in every rank's graph
        return logp, segments[sel]


def segment_lengths(segments: torch.Tensor) -> tuple[int, ...]:
    """Lengths of the runs of equal segment ids over the rows laid end to end (padding, -1, is a run of
    its own in each row: it attends only to padding, and its targets are ignored)."""
    flat = segments.reshape(-1)
    row_start = torch.zeros_like(flat, dtype=torch.bool)
    row_start[::segments.shape[1]] = True
    starts = torch.cat([flat.new_ones(1, dtype=torch.bool), flat[1:] != flat[:-1]]) | row_start
    idx = starts.nonzero().view(-1).tolist() + [flat.numel()]
    return tuple(b - a for a, b in zip(idx, idx[1:]))


def run(policy: nn.Module, batch: TrainBatch):
    return policy(batch.input_ids, batch.targets, batch.positions, batch.segments, batch.pixel_values,
                  batch.grid_thw, batch.n_image_tokens)


def sequence_logps(logp: torch.Tensor, seg: torch.Tensor, n_samples: int) -> torch.Tensor:
    """Per-sample sums of token log-probabilities: [n_samples]."""
    return torch.zeros(n_samples, dtype=logp.dtype, device=logp.device).index_add(0, seg, logp)


def dpo_terms(policy_logps: torch.Tensor, ref_logps: torch.Tensor, beta: float):
    """Sigmoid DPO over [chosen0, rejected0, chosen1, ...]: -log sigmoid(beta * (delta_chosen - delta_rejected)),
    summed over pairs; also the implicit reward margins (for logging)."""
    delta = policy_logps - ref_logps
    margin = beta * (delta[0::2] - delta[1::2])
    return -F.logsigmoid(margin).sum(), margin.detach()
