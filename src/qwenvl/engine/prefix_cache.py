"""Prefix caching: keys/values of earlier prompts reused by later ones, and vision features reused by content.

The engine's KV cache is one contiguous row per slot ([layers, slots, Hkv, S, D], model/text.py), not pages,
so reuse is by copy: the keys/values of every full block of `block_size` tokens a sequence has in its row are
copied into an LRU store, keyed by a hash chain over the blocks (the key of block i covers the tokens of
blocks 0..i), and a new sequence whose first blocks have stored keys gets them copied into its row and
prefills only the rest. A copy of a block costs a memory read and write; prefilling it costs the model.

Media: the pad tokens of an image all have the same id, so a key made of token ids alone would let two
different images of the same size share cache entries (the wrong-image bug of vLLM #20261, SGLang #5455).
Each block's key therefore also covers the content digest of every image or video whose pad tokens fall in
it: a hash of its pixel values, its grid (t, h, w) (the MRoPE positions of the span and of all text after it
depend on the grid) and, for video, its seconds per grid (the temporal positions). A match may stop inside
an image's span: the suffix then needs that image's features, which come from the vision cache (keyed by
the same digest) or the tower.

Eviction is least-recently-used by block, within a byte budget. A hit or an insert touches the blocks of a
chain deepest first, so the root is the most recent: the LRU end then drops leaves before the blocks they
hang on (a lone leaf without its parent can never be matched, since lookup walks the chain from the root).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch

from ..config import QwenVLConfig

MB = 2**20


@dataclass(frozen=True)
class MediaItem:
    kind: str        # "image" | "video"
    digest: bytes    # content hash: pixels, grid, timing
    tokens: int      # pad tokens of this item in the prompt (its features' rows)
    index: int       # position among the prompt's items of its kind (its slice of pixel values)


def _tensor_buffer(t: torch.Tensor):
    """The tensor's memory as a buffer hashlib reads without a copy."""
    t = t.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:   # numpy has no bfloat16: hash the raw 16-bit words
        t = t.view(torch.int16)
    return t.numpy()


def media_items(media: dict, config: QwenVLConfig) -> list[MediaItem]:
    """The content digests of a prompt's images and videos, images first, each kind in prompt order (the order
    of their grids, which is the order of their pad tokens)."""
    merge = config.vision.spatial_merge_size ** 2
    items = []
    for kind, pix_key, grid_key in (("image", "pixel_values", "image_grid_thw"),
                                    ("video", "pixel_values_videos", "video_grid_thw")):
        grid = media.get(grid_key)
        if grid is None:
            continue
        pixels, per = media.get(pix_key), 1
        if pixels is None:   # precomputed features instead of pixels: hash those, one row per token
            pixels, per = media[f"{kind}_embeds"], merge
        spg = media.get("second_per_grid_ts") if kind == "video" else None
        offset = 0
        for i, (t, h, w) in enumerate(grid.tolist()):
            n = t * h * w // per
            # sha256: a cache key must resist a crafted collision (one user's image answered with another's);
            # the normalized pixels cover the source and the preprocessing settings at once
            d = hashlib.sha256(f"{kind}:{t}x{h}x{w}:{pixels.dtype}:".encode())
            if spg is not None:
                d.update(f"{float(torch.as_tensor(spg).flatten()[i]):.9g}:".encode())
            d.update(_tensor_buffer(pixels[offset:offset + n]))
            offset += n
            items.append(MediaItem(kind, d.digest(), t * h * w // merge, i))
    return items


def block_keys(ids: list[int], items: list[MediaItem], config: QwenVLConfig, block_size: int,
               parent: bytes = b"") -> list[bytes]:
    """One key per full block of `ids`: a hash chain starting from `parent` (the key of the block before)."""
    # the digest owning each pad token, in token order (images and videos each consume their items in order)
    owner: dict[int, bytes] = {}
    queues = {config.image_token_id: [m for m in items if m.kind == "image"],
              config.video_token_id: [m for m in items if m.kind == "video"]}
    left = {tok: 0 for tok in queues}
    pos = {tok: 0 for tok in queues}
    for i, tok in enumerate(ids):
        q = queues.get(tok)
        if q is None:
            continue
        if left[tok] == 0:
            if pos[tok] >= len(q):
                raise ValueError(f"the prompt has more {'image' if tok == config.image_token_id else 'video'} "
                                 "pad tokens than its media grids cover")
            left[tok] = q[pos[tok]].tokens
            pos[tok] += 1
        owner[i] = q[pos[tok] - 1].digest
        left[tok] -= 1
    keys = []
    for b in range(len(ids) // block_size):
        lo, hi = b * block_size, (b + 1) * block_size
        d = hashlib.sha256(parent)
        d.update(torch.tensor(ids[lo:hi], dtype=torch.int64).numpy())
        seen = []
        for i in range(lo, hi):
            o = owner.get(i)
            if o is not None and (not seen or seen[-1] != o):
                seen.append(o)
        for o in seen:
            d.update(o)
        parent = d.digest()
        keys.append(parent)
    return keys


class LRUBytes:
    """A least-recently-used map whose values have a byte size; inserting past the budget drops the oldest."""

    def __init__(self, budget_bytes: int):
        self.budget = budget_bytes
        self.used = 0
        self.items: OrderedDict[bytes, tuple[object, int]] = OrderedDict()
        self.evictions = 0

    def __contains__(self, key) -> bool:
        return key in self.items

    def __len__(self) -> int:
        return len(self.items)

    def get(self, key):
        hit = self.items.get(key)
        if hit is None:
            return None
        self.items.move_to_end(key)
        return hit[0]

    def touch(self, key) -> None:
        if key in self.items:
            self.items.move_to_end(key)

    def put(self, key, value, size: int) -> bool:
        """Store `value`; False (nothing stored) when it alone is over the budget."""
        if key in self.items:
            self.items.move_to_end(key)
            return True
        if size > self.budget:
            return False
        while self.used + size > self.budget:
            _, (_, s) = self.items.popitem(last=False)
            self.used -= s
            self.evictions += 1
        self.items[key] = (value, size)
        self.used += size
        return True


class PrefixCache:
    """The KV-block store and the vision-feature store of one engine, with their hit counters.

    Only the engine's thread changes the stores; the counters are also read by /metrics, under `lock`."""

    def __init__(self, kv_mb: float = 1024, vision_mb: float = 256, block_size: int = 32):
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.block_size = block_size
        self.kv = LRUBytes(int(kv_mb * MB))
        self.vision = LRUBytes(int(vision_mb * MB))
        self.lock = threading.Lock()
        self.stats = {"queried_tokens": 0, "cached_tokens": 0, "vision_hits": 0, "vision_misses": 0}

    def _count(self, **inc) -> None:
        with self.lock:
            for k, v in inc.items():
                self.stats[k] += v

    def snapshot(self) -> dict:
        with self.lock:
            return {**self.stats, "kv_bytes": self.kv.used, "kv_blocks": len(self.kv), "kv_evictions":
                    self.kv.evictions, "vision_bytes": self.vision.used, "vision_items": len(self.vision)}

    # ------------------------------------------------------------------ KV blocks

    def match(self, keys: list[bytes], max_tokens: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The stored (k, v) blocks of the longest run of `keys` from the first, at most `max_tokens` tokens."""
        blocks = []
        for key in keys[:max_tokens // self.block_size]:
            kv = self.kv.items.get(key)
            if kv is None:
                break
            blocks.append(kv[0])
        for key in reversed(keys[:len(blocks)]):   # deepest first: the root ends most recent
            self.kv.touch(key)
        self._count(queried_tokens=max_tokens, cached_tokens=len(blocks) * self.block_size)
        return blocks

    def store(self, keys: list[bytes], cache, slot: int, first: int = 0) -> None:
        """Copy blocks first..len(keys) of cache row `slot` into the store (those already there are touched)."""
        B = self.block_size
        for b in range(first, len(keys)):
            if keys[b] in self.kv:
                continue
            k = cache.k[:, slot, :, b * B:(b + 1) * B].clone()
            v = cache.v[:, slot, :, b * B:(b + 1) * B].clone()
            if not self.kv.put(keys[b], (k, v), 2 * k.numel() * k.element_size()):
                break
        for key in reversed(keys):
            self.kv.touch(key)

    # ------------------------------------------------------------------ vision features

    def features(self, item: MediaItem):
        feats = self.vision.get(item.digest)
        self._count(**{"vision_hits" if feats is not None else "vision_misses": 1})
        return feats

    def store_features(self, item: MediaItem, feats: torch.Tensor) -> None:
        self.vision.put(item.digest, feats, feats.numel() * feats.element_size())
