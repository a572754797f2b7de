"""The generation engine: prefill each sequence into a slot of a preallocated KV cache, then decode all
active slots together, one token per step. Sequences join and leave between steps (continuous
batching); a batch of prompts is the same thing with every sequence added before the first step.

A prefill is a queue of units run by `step()` next to the decode step (chunked prefill): the media
encoding, in slices of the vision tower's blocks, then chunks of the prompt. With a prefix cache
(prefix_cache.py) a prompt starts from the stored keys/values of its longest cached prefix, and n > 1
completions of one prompt share its prefill (their rows are copies).

The engine knows token ids and media tensors only; text (detokenizing, stop strings, events per
sequence) is the generation driver's (driver.py).
Positions: each sequence carries the MRoPE positions of its prompt and its delta (pure functions of
the prompt, see model/rope.py); decode token n of a sequence sits at n + delta on all three rows.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field

import torch

from ..model import QwenVL
from ..model.layers import compute_dtype
from ..model.rope import decode_positions, mrope_positions
from ..fast.native_decode import NativeDecoder
from .prefix_cache import PrefixCache, block_keys, media_items
from .logprobs import token_logprob
from .sampling import SamplingParams, make_generator, process_logits, sample


@dataclass
class Sequence:
    """One prompt being completed. `media` holds the model's vision inputs for this prompt only
    (pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw, second_per_grid_ts)."""

    prompt_ids: list[int]
    params: SamplingParams
    media: dict = field(default_factory=dict)
    eos_ids: tuple[int, ...] = ()
    output_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None   # "stop" | "length" | "abort" | "error"
    error: Exception | None = None     # why this sequence failed (finish_reason "error"); the others go on
    slot: int = -1
    delta: int = 0
    generator: torch.Generator | None = None
    timings: dict = field(default_factory=dict)
    cached_tokens: int = 0             # prompt tokens whose keys/values came from the prefix cache
    media_items: list | None = None    # content digests of the media (prefix_cache.media_items); None: computed
    prefilling: bool = False           # holds a slot, first token not sampled yet
    block_keys: list = field(default_factory=list)   # prefix-cache keys of the prompt's full blocks
    constraint: object | None = None   # engine.grammar.Constraint: masks each choice to a grammar
    logprobs: list = field(default_factory=list)   # TokenLogprob per output token when params.logprobs is set

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def finish(self, reason: str) -> None:
        if self.finish_reason is None:
            self.finish_reason = reason


@dataclass(eq=False)
class Prefill:
    """A prompt on its way into the cache: `done` of its tokens have keys/values in the row of `seq`; the
    siblings (same prompt, n > 1) hold slots and get a copy of the row when it is complete."""
    seq: Sequence
    siblings: list[Sequence]
    positions: torch.Tensor        # [3, 1, L]
    start: int                     # tokens taken from the prefix cache
    done: int
    work: object = None            # the prefill's generator (Engine._prefill)


class Engine:
    """Decode steps go through `NativeDecoder`: all decoder layers in one native call on CPUs where
    the native kernels build (qwenvl.fast), the model's layers elsewhere. `compile=True` instead runs them through
    `torch.compile` of the decoder (dynamic shapes: one graph for every cache length). Prefill stays eager:
    its lengths vary per prompt and its time is in GEMMs. Compiling takes tens of seconds on the first
    step; on 2 EPYC cores it gave no speedup (the step's time is in weight reads), so it is off by default.

    Two ways in: `add(seq)` prefills at once and returns the first token (batch generation); `admit(seq)`
    takes a slot and leaves the prefill to `step()`, which runs one unit of it per call next to the decode
    step of the running batch (serving). A unit is the media encoding, or `prefill_chunk` prompt tokens
    (all of them when None), so a long prompt never holds the running streams for its whole prefill.
    With a `prefix_cache` (engine/prefix_cache.py), prompts start from the stored keys/values of their
    longest cached prefix and media features are reused by content."""

    def __init__(self, model: QwenVL, max_batch: int = 8, max_len: int | None = None, compile: bool = False,
                 prefix_cache: PrefixCache | None = None, prefill_chunk: int | None = None):
        if prefill_chunk is not None and prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be >= 1 or None, got {prefill_chunk}")
        self.model = model
        self.max_batch = max_batch
        self.max_len = max_len or model.config.text.max_position_embeddings
        self.cache = None
        self.slots: list[Sequence | None] = [None] * max_batch
        self.prefix_cache = prefix_cache
        self.prefill_chunk = prefill_chunk
        self.prefills: collections.deque[Prefill] = collections.deque()
        self.failed: list[tuple[Sequence, Exception]] = []   # prefills that raised in step(); the caller drains
        self.last_batch = 0                                  # sequences in the last decode step
        # a wrapper around the model's decoder for decoding steps: nothing is stored on the model itself
        self.decoder = (torch.compile(model.language_model, dynamic=True) if compile
                        else NativeDecoder(model.language_model))

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def active(self) -> list[Sequence]:
        return [s for s in self.slots if s is not None]

    def has_free_slot(self) -> bool:
        return any(s is None for s in self.slots)

    def free_slots(self) -> int:
        return sum(s is None for s in self.slots)

    def _ensure_cache(self):
        if self.cache is None:
            self.cache = self.model.new_cache(self.max_batch, self.max_len)

    # ------------------------------------------------------------------ admission

    @torch.inference_mode()
    def add(self, seq: Sequence, siblings: list[Sequence] = ()) -> int | None:
        """Prefill `seq` into a free slot and sample its first token, which is returned (siblings: see
        `admit`; their first tokens are in their output_ids). None when that choice failed: the sequence is
        finished with `error` set (NaN logits, its sampler or constraint raised) and still holds its slot."""
        state = self.admit(seq, siblings)
        self.prefills.remove(state)
        try:
            while not self._advance(state):
                pass
        except Exception:
            for s in (seq, *siblings):
                if self.slots[s.slot] is s:
                    self.slots[s.slot] = None
            raise
        return None if seq.error is not None else seq.output_ids[-1]

    @torch.inference_mode()
    def admit(self, seq: Sequence, siblings: list[Sequence] = ()) -> Prefill:
        """Give `seq` a slot and queue its prefill for `step()`. `siblings` are more completions of the same
        prompt and media (n > 1): each gets a slot now and, once the prompt is in the cache, a copy of
        `seq`'s row and its first token sampled from the same logits: one vision pass, one prefill."""
        group = [seq, *siblings]
        L = len(seq.prompt_ids)
        if L >= self.max_len:
            raise ValueError(f"prompt has {L} tokens, over the model length of {self.max_len}")
        for s in siblings:
            if s.prompt_ids != seq.prompt_ids:
                raise ValueError("siblings must have the same prompt as the sequence they share a prefill with")
        if self.free_slots() < len(group):
            raise RuntimeError(f"{len(group)} slots needed, {self.free_slots()} free: wait for sequences to finish")
        # what can fail on a bad prompt comes before taking slots
        m = seq.media
        positions, delta = mrope_positions(torch.tensor([seq.prompt_ids]), self.model.config, None,
                                           m.get("image_grid_thw"), m.get("video_grid_thw"),
                                           m.get("second_per_grid_ts"))
        pc = self.prefix_cache
        if pc is not None:
            if seq.media_items is None:
                seq.media_items = media_items(m, self.model.config)
            seq.block_keys = block_keys(seq.prompt_ids, seq.media_items, self.model.config, pc.block_size)
        self._ensure_cache()
        for s in group:
            s.slot = self.slots.index(None)
            s.generator = make_generator(s.params.seed, self.device)
            s.max_total = min(len(s.prompt_ids) + s.params.max_new_tokens, self.max_len)
            s.prefilling = True
            self.slots[s.slot] = s
        start = 0
        if pc is not None:
            blocks = pc.match(seq.block_keys, L - 1)   # the last prompt token is always computed: its logits
            if blocks:
                start = len(blocks) * pc.block_size
                self.cache.k[:, seq.slot, :, :start] = torch.cat([k for k, _ in blocks], dim=2)
                self.cache.v[:, seq.slot, :, :start] = torch.cat([v for _, v in blocks], dim=2)
        self.cache.lengths[seq.slot] = start
        for s in group:
            s.delta = int(delta[0])
            s.cached_tokens = start
            s.media_items, s.block_keys = seq.media_items, seq.block_keys
        state = Prefill(seq, list(siblings), positions.to(self.device), start, start)
        self.prefills.append(state)
        return state

    def _advance(self, state: Prefill) -> bool:
        """One unit of `state`'s prefill (all of it without chunking); True when the prompt is in the cache and
        the first tokens are sampled."""
        if state.work is None:
            state.work = self._prefill(state)
        try:
            next(state.work)
            while self.prefill_chunk is None:
                next(state.work)
        except StopIteration:
            return True
        return False

    def _prefill(self, state: Prefill):
        """The prefill as a generator: it yields between units of work (tower steps, prompt chunks)."""
        t0 = time.perf_counter()
        embeds = yield from self._embed(state)
        vision_s = time.perf_counter() - t0
        L = len(state.seq.prompt_ids)
        while True:
            # state.seq is read per chunk: a sibling takes the prefill over if its sequence is released
            rows = torch.tensor([state.seq.slot], device=self.device)
            lo = state.done
            hi = L if self.prefill_chunk is None else min(L, lo + self.prefill_chunk)
            # chunk query i sits at lo + i and may attend to every key up to it, cached or new
            mask = torch.arange(hi, device=self.device)[None] <= torch.arange(lo, hi, device=self.device)[:, None]
            hidden = self.model.language_model(embeds[:, lo - state.start:hi - state.start],
                                               state.positions[:, :, lo:hi], mask[None, None], self.cache, rows)
            state.done = hi
            if hi == L:
                break
            yield
        seq = state.seq
        logits = self.model.logits(hidden[:, -1])[0]
        # one sync for the group: NaN logits end every sequence of the prompt, with an error
        nan = bool(torch.isnan(logits).any())
        seq.prefilling = False
        self._pick_or_fail(seq, logits, nan)
        for s in state.siblings:
            if self.slots[s.slot] is not s:   # released while waiting
                continue
            self.cache.k[:, s.slot, :, :L] = self.cache.k[:, seq.slot, :, :L]
            self.cache.v[:, s.slot, :, :L] = self.cache.v[:, seq.slot, :, :L]
            self.cache.lengths[s.slot] = L
            s.prefilling = False
            self._pick_or_fail(s, logits, nan)
        if self.prefix_cache is not None and not nan:   # NaN keys/values must not reach other prompts
            self.prefix_cache.store(seq.block_keys, self.cache, seq.slot,
                                    first=state.start // self.prefix_cache.block_size)
        t = time.perf_counter() - t0
        for s in [seq, *state.siblings]:
            s.timings.update(vision_s=vision_s, prefill_s=t, decode_s=0.0)

    def _embed(self, state: Prefill):
        """Embeddings of the prompt tokens not taken from the cache, media features in place (a generator:
        yields between tower steps, returns the embeddings)."""
        seq, start = state.seq, state.start
        ids = torch.tensor([seq.prompt_ids], device=self.device)
        cfg, m = self.model.config, seq.media
        rest = ids[:, start:]
        if not bool(((rest == cfg.image_token_id) | (rest == cfg.video_token_id)).any()):
            return self.model.language_model.embed_tokens(rest)   # no media, or all in the cached prefix
        if self.prefix_cache is None and self.prefill_chunk is None:   # the model's own path: one tower call
            embeds = self.model.embed(ids, m.get("pixel_values"), m.get("image_grid_thw"),
                                      m.get("pixel_values_videos"), m.get("video_grid_thw"),
                                      m.get("image_embeds"), m.get("video_embeds"))
            return embeds[:, start:]
        feats = {}
        for kind, token, pix_key, grid_key in (("image", cfg.image_token_id, "pixel_values", "image_grid_thw"),
                                               ("video", cfg.video_token_id, "pixel_values_videos",
                                                "video_grid_thw")):
            if m.get(f"{kind}_embeds") is not None:
                feats[kind] = m[f"{kind}_embeds"]
            elif m.get(grid_key) is not None:
                feats[kind] = yield from self._features(seq, kind, ids, start, token, m[pix_key], m[grid_key])
        return self.model.embed(ids, image_embeds=feats.get("image"), video_embeds=feats.get("video"))[:, start:]

    def _features(self, seq, kind, ids, start, token, pixels, grid):
        """The features of one kind's items in prompt order: from the vision cache, else from the tower, one
        item at a time (in steps when chunking); zeros for items wholly inside the cached prefix (never read)."""
        pc, cfg = self.prefix_cache, self.model.config
        pads = (ids[0] == token).nonzero().flatten().tolist()   # token index of each pad, in order
        sizes = grid.prod(-1).tolist()
        offsets = [0] + torch.tensor(sizes).cumsum(0).tolist()
        merge = cfg.vision.spatial_merge_size ** 2
        items = [it for it in seq.media_items or [] if it.kind == kind]
        parts, used = [], 0
        for i, n in enumerate(sizes):
            tokens = n // merge
            span_end = pads[used + tokens - 1]
            used += tokens
            if span_end < start:
                parts.append(torch.zeros(tokens, cfg.text.hidden_size, device=self.device))
                continue
            item = items[i] if pc is not None else None
            f = pc.features(item) if pc is not None else None
            if f is None:
                f = yield from self._encode(pixels[offsets[i]:offsets[i + 1]], grid[i:i + 1])
                if pc is not None:
                    pc.store_features(item, f)
            parts.append(f)
        return torch.cat(parts)

    def _encode(self, pixels: torch.Tensor, grid: torch.Tensor):
        """The vision tower on one item. Without chunking, one call; with it, the steps of
        VisionTransformer.forward split between blocks so that one step costs about what a prompt chunk of
        the decoder does (counted in multiply-adds per patch and per token from the config)."""
        visual = self.model.visual
        if self.prefill_chunk is None:
            return visual(pixels, grid)
        cfg, tc = visual.cfg, self.model.config.text
        n = pixels.shape[0]
        if n != int(grid.prod(-1).sum()):
            raise ValueError(f"pixel_values has {n} patches, the grid {grid.tolist()} needs "
                             f"{int(grid.prod(-1).sum())}")
        d, q, kv = tc.hidden_size, tc.num_attention_heads * tc.head_dim, tc.num_key_value_heads * tc.head_dim
        chunk_cost = self.prefill_chunk * tc.num_hidden_layers * (d * (2 * q + 2 * kv)
                                                                  + 3 * d * tc.intermediate_size)
        block_cost = n * (4 * cfg.hidden_size ** 2 + 3 * cfg.hidden_size * cfg.intermediate_size)
        per_step = max(1, chunk_cost // block_cost)
        # the steps of VisionTransformer.forward, in the same order (the result is the same to the bit)
        layout = visual.layout(grid)
        unit = cfg.merge_unit
        x = visual.patch_embed(pixels.to(compute_dtype(visual.dtype, pixels.device)))
        x = x.view(n // unit, unit, -1)[layout.window_index.to(x.device)].view(n, -1)
        cos, sin = visual.rope(layout.rope_hw)
        full = set(cfg.fullatt_block_indexes)
        for i, block in enumerate(visual.blocks):
            x = block(x, cos, sin, layout.frames if i in full else layout.windows)
            if (i + 1) % per_step == 0 or i + 1 == len(visual.blocks):
                yield
        return visual.merger(x)[layout.reverse_index.to(x.device)].to(visual.dtype)

    # ------------------------------------------------------------------ decoding

    @torch.inference_mode()
    def step(self) -> list[tuple[Sequence, int]]:
        """One decode step for every running sequence, then one unit of the oldest queued prefill: returns
        (sequence, new token) pairs, first tokens of completed prefills included. A prefill that raises
        frees its slots and goes to `self.failed`; the running batch is not affected. A sequence whose own
        token choice fails (see `_pick_or_fail`) has no pair: it is finished with `error` set."""
        out = self._decode()
        if self.prefills:
            state = self.prefills[0]
            group = [state.seq, *state.siblings]
            try:
                done = self._advance(state)
            except Exception as e:
                self.prefills.popleft()
                for s in group:
                    if self.slots[s.slot] is s:
                        self.slots[s.slot] = None
                        self.failed.append((s, e))
                        s.finish("abort")
                return out
            if done:
                self.prefills.popleft()
                out += [(s, s.output_ids[-1]) for s in group if self.slots[s.slot] is s and s.error is None]
        return out

    def _decode(self) -> list[tuple[Sequence, int]]:
        running = [s for s in self.active if not s.finished and not s.prefilling]
        self.last_batch = len(running)
        if not running:
            return []
        t0 = time.perf_counter()
        rows = torch.tensor([s.slot for s in running], device=self.device)
        lengths = self.cache.lengths[rows]
        tokens = torch.tensor([[s.output_ids[-1]] for s in running], device=self.device)
        deltas = torch.tensor([s.delta for s in running], device=self.device)
        positions = decode_positions(lengths, deltas)
        S = int(lengths.max()) + 1
        mask = (torch.arange(S, device=self.device)[None] <= lengths[:, None])[:, None, None, :]
        embeds = self.model.language_model.embed_tokens(tokens)
        hidden = self.decoder(embeds, positions, mask, self.cache, rows)
        logits = self.model.logits(hidden[:, -1])
        nan = torch.isnan(logits).any(-1).tolist()   # one sync for the whole batch
        out = []
        for i, s in enumerate(running):
            token = self._pick_or_fail(s, logits[i], nan[i])
            if token is not None:
                out.append((s, token))
        dt = time.perf_counter() - t0
        for s in running:
            s.timings["decode_s"] = s.timings.get("decode_s", 0.0) + dt
        return out

    def _pick_or_fail(self, seq: Sequence, logits: torch.Tensor, nan: bool) -> int | None:
        """`_pick`, except that a failure of this sequence's own choice (NaN logits, its sampler or grammar
        constraint raising) ends this sequence only, with `error` set and finish reason "error", and returns
        None: the others in the batch, or the other choices of its prompt, go on."""
        try:
            if nan:
                raise FloatingPointError("the model produced NaN logits for this sequence")
            return self._pick(seq, logits)
        except Exception as e:
            seq.error = e
            seq.finish("error")
            return None

    def _pick(self, seq: Sequence, logits: torch.Tensor) -> int:
        seen = torch.tensor(seq.prompt_ids + seq.output_ids, device=logits.device)
        p = seq.params
        logits = process_logits(logits, p, seen)
        if seq.constraint is not None:
            logits = seq.constraint.mask(logits)
        token = sample(logits, p, seq.generator)
        if p.logprobs is not None:
            seq.logprobs.append(token_logprob(logits, token, p.logprobs))
        seq.output_ids.append(token)
        if seq.constraint is not None:
            seq.constraint.advance(token)
        if not p.ignore_eos and (token in seq.eos_ids or token in p.stop_token_ids):
            seq.finish("stop")
        elif seq.constraint is not None and seq.constraint.done:   # the grammar is complete
            seq.finish("stop")
        elif len(seq.output_ids) >= p.max_new_tokens or len(seq.prompt_ids) + len(seq.output_ids) >= seq.max_total:
            seq.finish("length")
        return token

    @torch.inference_mode()
    def release(self, seq: Sequence) -> None:
        """Free the slot of a finished (or aborted) sequence. With a prefix cache, the full blocks of its row
        (prompt and generated tokens: a later turn of the chat starts with them) are stored first."""
        if 0 <= seq.slot < len(self.slots) and self.slots[seq.slot] is seq:
            self._store_row(seq)
            self._drop_prefill(seq)
            self.slots[seq.slot] = None
        seq.finish("abort")

    def _store_row(self, seq: Sequence) -> None:
        pc = self.prefix_cache
        if pc is None or self.cache is None or seq.prefilling or isinstance(seq.error, FloatingPointError):
            return   # (NaN logits: its keys/values may be NaN too, and must not reach other prompts)
        n = int(self.cache.lengths[seq.slot])
        tokens = (seq.prompt_ids + seq.output_ids)[:n]
        if n // pc.block_size <= len(seq.block_keys):
            return
        try:
            keys = block_keys(tokens, seq.media_items or [], self.model.config, pc.block_size)
        except ValueError:   # output ids that look like media pads: not a prefix any prompt can have
            return
        pc.store(keys, self.cache, seq.slot, first=len(seq.block_keys))

    def _drop_prefill(self, seq: Sequence) -> None:
        """A sequence released before its prefill completed: a sibling takes over the prefill, with the part
        of the row already computed, or the prefill is dropped."""
        for state in list(self.prefills):
            if state.seq is seq:
                alive = [s for s in state.siblings if self.slots[s.slot] is s]
                if not alive:
                    self.prefills.remove(state)
                    return
                heir, n = alive[0], state.done
                self.cache.k[:, heir.slot, :, :n] = self.cache.k[:, seq.slot, :, :n]
                self.cache.v[:, heir.slot, :, :n] = self.cache.v[:, seq.slot, :, :n]
                self.cache.lengths[heir.slot] = n
                state.seq, state.siblings = heir, alive[1:]
                return
            if any(s is seq for s in state.siblings):   # identity: Sequence compares by value
                state.siblings = [s for s in state.siblings if s is not seq]
                return


def generate(engine: Engine, seqs: list[Sequence]):
    """Run `seqs` to completion, admitting them as slots free up; yields (sequence, token) as produced."""
    pending = list(seqs)
    while pending or engine.active:
        while pending and engine.has_free_slot():
            seq = pending.pop(0)
            token = engine.add(seq)
            if token is not None:   # None: its first choice failed (seq.error); it is released below
                yield seq, token
        for seq, tok in engine.step():
            yield seq, tok
        for seq in engine.active:
            if seq.finished:
                engine.release(seq)
