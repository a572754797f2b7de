"""Encoded samples, best-fit-decreasing packing, and collation into the tensors one step consumes.

A `TrainSample` is one encoded conversation: token ids, next-token targets (already shifted, -100 where
nothing is learned), its media tensors and its own MRoPE positions. A micro-batch is B rows; each row
holds one sample (unpacked) or several (packed). Either way the row carries a segment id per token and
the attention mask is block-diagonal causal: a token sees earlier tokens of its own sample only, and
each sample's positions start from 0 as if it were alone. Because targets are shifted per sample before
concatenation, nothing is ever learned across a boundary, so packed and unpacked losses are the same
sums over the same tokens.

Shapes: B rows, L longest row, N patches, S samples in the micro-batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

IGNORE = -100


@dataclass
class TrainSample:
    input_ids: torch.Tensor                      # [L] long
    targets: torch.Tensor                        # [L] long: the label of token t+1, or IGNORE
    positions: torch.Tensor                      # [3, L] long, from mrope_positions on this sample alone
    pixel_values: torch.Tensor | None = None     # [N_img, C*T*P*P]
    image_grid_thw: torch.Tensor | None = None   # [n_img, 3]
    pixel_values_videos: torch.Tensor | None = None
    video_grid_thw: torch.Tensor | None = None
    second_per_grid_ts: torch.Tensor | None = None
    where: str = ""                              # file:line of the record, for messages
    weights: torch.Tensor | None = None          # [L] float: 1/len(reply) on each reply's targets, else 0

    @property
    def n_replies(self) -> int:
        sup = self.targets != IGNORE
        return int((sup & ~torch.cat([sup.new_zeros(1), sup[:-1]])).sum())

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def n_supervised(self) -> int:
        return int((self.targets != IGNORE).sum())


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    """labels [L] (IGNORE where unsupervised) -> targets [L]: position t predicts token t+1."""
    return torch.cat([labels[1:], labels.new_full((1,), IGNORE)])


# ------------------------------------------------------------------------------------------- packing

def best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices grouped into bins of total length <= capacity: longest first, each into the fullest bin
    that still has room. Items longer than the capacity are the caller's to reject beforehand.
    The result is deterministic: ties keep the input order."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = lengths[i]
        best = -1
        for b, r in enumerate(room):
            if n <= r and (best < 0 or r < room[best]):
                best = b
        if best < 0:
            bins.append([i])
            room.append(capacity - n)
        else:
            bins[best].append(i)
            room[best] -= n
    return bins


# ------------------------------------------------------------------------------------------- batches

@dataclass
class TrainBatch:
    input_ids: torch.Tensor            # [B, L]
    targets: torch.Tensor              # [B, L]
    positions: torch.Tensor            # [3, B, L]
    segments: torch.Tensor             # [B, L] sample index within the micro-batch, -1 on padding
    pixel_values: torch.Tensor | None  # every image and video patch of the micro-batch, images first
    grid_thw: torch.Tensor | None      # [n_items, 3] matching pixel_values
    n_image_tokens: int                # how many of the merged vision features go to <|image_pad|>
    n_samples: int
    stats: dict = field(default_factory=dict)
    weights: torch.Tensor | None = None  # [B, L] per-target weights of --loss-weighting reply
    n_replies: int = 0

    @property
    def n_supervised(self) -> int:
        return int((self.targets != IGNORE).sum())

    def to(self, device) -> "TrainBatch":
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return TrainBatch(move(self.input_ids), move(self.targets), move(self.positions), move(self.segments),
                          move(self.pixel_values), move(self.grid_thw), self.n_image_tokens, self.n_samples,
                          self.stats, move(self.weights), self.n_replies)


def block_causal_mask(segments: torch.Tensor) -> torch.Tensor:
    """Segment ids [B, L] (-1 = padding) -> boolean [B, 1, L, L], True = may attend: causal within a
    segment, nothing across segments. Padding queries attend to nothing (the model turns that into
    uniform attention, never NaN; their targets are ignored)."""
    L = segments.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool, device=segments.device).tril()
    same = (segments[:, :, None] == segments[:, None, :]) & (segments[:, None, :] >= 0)
    return (same & causal)[:, None]


def collate(rows: list[list[TrainSample]], pad_id: int, merge_unit: int = 4) -> TrainBatch:
    """Rows of samples -> one right-padded TrainBatch. Samples are numbered in row order; media follow the
    same order (all images first, then all videos), which is the order their pad tokens appear in."""
    L = max(sum(len(s) for s in row) for row in rows)
    B = len(rows)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    targets = torch.full((B, L), IGNORE, dtype=torch.long)
    positions = torch.zeros(3, B, L, dtype=torch.long)
    segments = torch.full((B, L), -1, dtype=torch.long)
    weights = torch.zeros((B, L))
    images, image_grids, videos, video_grids = [], [], [], []
    k = replies = 0
    for b, row in enumerate(rows):
        at = 0
        for s in row:
            n = len(s)
            ids[b, at:at + n] = s.input_ids
            targets[b, at:at + n] = s.targets
            positions[:, b, at:at + n] = s.positions
            segments[b, at:at + n] = k
            if s.weights is not None:
                weights[b, at:at + n] = s.weights
            replies += s.n_replies
            if s.pixel_values is not None:
                images.append(s.pixel_values)
                image_grids.append(s.image_grid_thw)
            if s.pixel_values_videos is not None:
                videos.append(s.pixel_values_videos)
                video_grids.append(s.video_grid_thw)
            at += n
            k += 1
    pixels = torch.cat(images + videos) if images or videos else None
    grids = torch.cat(image_grids + video_grids).long() if images or videos else None
    n_image_tokens = int(torch.cat(image_grids).prod(-1).sum()) // merge_unit if images else 0
    real = int((segments >= 0).sum())
    stats = {"tokens": real, "fill": real / (B * L), "samples": k, "rows": B}
    return TrainBatch(ids, targets, positions, segments, pixels, grids, n_image_tokens, k, stats, weights, replies)


def plan_rows(units: list[list[TrainSample]], max_len: int, pack: bool) -> list[list[TrainSample]]:
    """Units (a sample, or a chosen/rejected pair that must stay together) -> rows.
    Unpacked: one sample per row. Packed: best-fit-decreasing over the units' total lengths."""
    if not pack:
        return [[s] for u in units for s in u]
    bins = best_fit_decreasing([sum(len(s) for s in u) for u in units], max_len)
    return [[s for i in b for s in units[i]] for b in bins]
