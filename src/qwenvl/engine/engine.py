"""The generation engine: prefill one sequence into a slot of a preallocated KV cache, then decode all
active slots together, one token per step. Sequences join and leave between steps (continuous
batching); a batch of prompts is the same thing with every sequence added before the first step.

The engine knows token ids and media tensors only; text (stop strings, streaming) is the caller's.
Positions: each sequence carries the MRoPE positions of its prompt and its delta (pure functions of
the prompt, see model/rope.py); decode token n of a sequence sits at n + delta on all three rows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..model import QwenVL
from ..model.rope import decode_positions, mrope_positions
from .native_decode import NativeDecoder
from .sampling import SamplingParams, make_generator, next_token


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

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def finish(self, reason: str) -> None:
        if self.finish_reason is None:
            self.finish_reason = reason


class Engine:
    """Decode steps go through `NativeDecoder`: all decoder layers in one native call on CPUs where
    qwenvl.kernels builds, the model's layers elsewhere. `compile=True` instead runs them through
    `torch.compile` of the decoder (dynamic shapes: one graph for every cache length). Prefill stays eager:
    its lengths vary per prompt and its time is in GEMMs. Compiling takes tens of seconds on the first
    step; on 2 EPYC cores it gave no speedup (the step's time is in weight reads), so it is off by default."""

    def __init__(self, model: QwenVL, max_batch: int = 8, max_len: int | None = None, compile: bool = False):
        self.model = model
        self.max_batch = max_batch
        self.max_len = max_len or model.config.text.max_position_embeddings
        self.cache = None
        self.slots: list[Sequence | None] = [None] * max_batch
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

    def _ensure_cache(self):
        if self.cache is None:
            self.cache = self.model.new_cache(self.max_batch, self.max_len)

    # ------------------------------------------------------------------ admission

    @torch.inference_mode()
    def add(self, seq: Sequence) -> int | None:
        """Prefill `seq` into a free slot and sample its first token. Returns that token (None if the
        sequence finished without one, which cannot happen: the first token is always sampled)."""
        need = len(seq.prompt_ids) + seq.params.max_new_tokens
        if len(seq.prompt_ids) >= self.max_len:
            raise ValueError(f"prompt has {len(seq.prompt_ids)} tokens, over the model length of {self.max_len}")
        if not self.has_free_slot():
            raise RuntimeError("no free slot: wait for a sequence to finish")
        self._ensure_cache()
        slot = self.slots.index(None)
        seq.slot = slot
        seq.generator = make_generator(seq.params.seed, self.device)
        seq.max_total = min(need, self.max_len)
        self.slots[slot] = seq

        t0 = time.perf_counter()
        ids = torch.tensor([seq.prompt_ids], device=self.device)
        m = seq.media
        positions, delta = mrope_positions(ids, self.model.config, None, m.get("image_grid_thw"),
                                           m.get("video_grid_thw"), m.get("second_per_grid_ts"))
        seq.delta = int(delta[0])
        embeds = self.model.embed(ids, m.get("pixel_values"), m.get("image_grid_thw"),
                                  m.get("pixel_values_videos"), m.get("video_grid_thw"),
                                  m.get("image_embeds"), m.get("video_embeds"))
        t1 = time.perf_counter()
        L = ids.shape[1]
        rows = torch.tensor([slot], device=self.device)
        self.cache.lengths[slot] = 0
        mask = torch.ones(L, L, dtype=torch.bool, device=self.device).tril()[None, None]
        hidden = self.model.language_model(embeds, positions.to(self.device), mask, self.cache, rows)
        logits = self.model.logits(hidden[:, -1])[0]
        if torch.isnan(logits).any():
            raise FloatingPointError("the model produced NaN logits for this prompt")
        token = self._pick(seq, logits)
        seq.timings.update(vision_s=t1 - t0, prefill_s=time.perf_counter() - t0, decode_s=0.0)
        return token

    # ------------------------------------------------------------------ decoding

    @torch.inference_mode()
    def step(self) -> list[tuple[Sequence, int]]:
        """One decode step for every unfinished sequence: returns (sequence, new token) pairs."""
        running = [s for s in self.active if not s.finished]
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
        # A failure in one sequence's sampling (NaN logits, an exception in its sampler) ends that
        # sequence only, with `error` set; the others in the batch go on. One sync for the whole batch.
        nan = torch.isnan(logits).any(-1).tolist()
        out = []
        for i, s in enumerate(running):
            try:
                if nan[i]:
                    raise FloatingPointError("the model produced NaN logits for this sequence")
                out.append((s, self._pick(s, logits[i])))
            except Exception as e:
                s.error = e
                s.finish("error")
        dt = time.perf_counter() - t0
        for s in running:
            s.timings["decode_s"] = s.timings.get("decode_s", 0.0) + dt
        return out

    def _pick(self, seq: Sequence, logits: torch.Tensor) -> int:
        seen = torch.tensor(seq.prompt_ids + seq.output_ids, device=logits.device)
        token = next_token(logits, seq.params, seen, seq.generator)
        seq.output_ids.append(token)
        p = seq.params
        if not p.ignore_eos and (token in seq.eos_ids or token in p.stop_token_ids):
            seq.finish("stop")
        elif len(seq.output_ids) >= p.max_new_tokens or len(seq.prompt_ids) + len(seq.output_ids) >= seq.max_total:
            seq.finish("length")
        return token

    def release(self, seq: Sequence) -> None:
        """Free the slot of a finished (or aborted) sequence."""
        if 0 <= seq.slot < len(self.slots) and self.slots[seq.slot] is seq:
            self.slots[seq.slot] = None
        seq.finish("abort")


def generate(engine: Engine, seqs: list[Sequence]):
    """Run `seqs` to completion, admitting them as slots free up; yields (sequence, token) as produced."""
    pending = list(seqs)
    while pending or engine.active:
        while pending and engine.has_free_slot():
            seq = pending.pop(0)
            yield seq, engine.add(seq)
        for seq, tok in engine.step():
            yield seq, tok
        for seq in engine.active:
            if seq.finished:
                engine.release(seq)
