"""Prefix caching, the vision-feature cache, n > 1 sharing one prefill, and chunked prefill: each must give the
tokens of a plain uncached run (float32 tiny model), and the cache must never match across different images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from qwenvl.engine.engine import Engine, Sequence, generate
from qwenvl.engine.prefix_cache import LRUBytes, PrefixCache, block_keys, media_items
from qwenvl.engine.sampling import SamplingParams
from qwenvl.model.weights import load_model
from qwenvl.processing import Processor

MEDIA = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")
GREEDY = SamplingParams(max_new_tokens=8, temperature=0)
BLOCK = 8


@pytest.fixture(scope="module")
def ours(own_ckpt):
    return load_model(own_ckpt)


@pytest.fixture(scope="module")
def proc(own_ckpt):
    return Processor.from_pretrained(own_ckpt)


def image(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def seq_for(proc, turns, images=(), params=GREEDY, system=None):
    """turns: user texts and assistant answers alternating; the images go into the first user turn."""
    conv = [{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []
    for i, text in enumerate(turns):
        role = "user" if i % 2 == 0 else "assistant"
        content = ([{"type": "image", "image": im} for im in images] if i == 0 else []) + [{"type": "text", "text": text}]
        conv.append({"role": role, "content": content})
    batch = proc(conv)
    return Sequence(prompt_ids=batch["input_ids"][0].tolist(), params=params,
                    media={k: batch[k] for k in MEDIA if k in batch})


def serve(engine, seqs):
    """Admit as slots free up and step, as the server's scheduler does (prefill in step())."""
    pending = list(seqs)
    while pending or engine.active:
        while pending and engine.free_slots():
            engine.admit(pending.pop(0))
        engine.step()
        assert not engine.failed
        for s in engine.active:
            if s.finished:
                engine.release(s)
    return [s.output_ids for s in seqs]


def uncached(model, seq):
    fresh = Sequence(prompt_ids=list(seq.prompt_ids), params=seq.params, media=seq.media)
    for _ in generate(Engine(model, max_batch=1, max_len=512), [fresh]):
        pass
    return fresh.output_ids


class LogitsSpy:
    """The LM head's outputs (the first token's logits of each prefill are rows [0, -1])."""

    def __init__(self, model):
        self.rows = []
        self.hook = model.lm_head.register_forward_hook(lambda m, a, out: self.rows.append(out.detach().clone()))


class Calls:
    """Counts a module's calls and the lengths of their first input; hooks removed on exit."""

    def __init__(self, module):
        self.module, self.lengths = module, []

    def __enter__(self):
        self.hook = self.module.register_forward_pre_hook(lambda m, args: self.lengths.append(args[0].shape[-2]))
        return self

    def __exit__(self, *exc):
        self.hook.remove()

    @property
    def n(self) -> int:
        return len(self.lengths)


def shared_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def test_repeat_and_second_turn_hit_the_cache_and_match_uncached(ours, proc):
    pc = PrefixCache(kv_mb=64, vision_mb=16, block_size=BLOCK)
    engine = Engine(ours, max_batch=2, max_len=512, prefix_cache=pc)
    img = image(150, 100)
    q1 = "What is in the image? Describe it in detail please."
    first = seq_for(proc, [q1], [img])
    assert serve(engine, [first])[0] == uncached(ours, first)
    assert first.cached_tokens == 0

    spy = LogitsSpy(ours)
    again = seq_for(proc, [q1], [img])
    out = serve(engine, [again])[0]
    cached_logits = spy.rows[0][0, -1]
    spy.rows.clear()
    ref = uncached(ours, again)
    ref_logits = spy.rows[0][0, -1]
    spy.hook.remove()
    L = len(again.prompt_ids)
    assert again.cached_tokens >= 0.8 * L and again.cached_tokens == (L - 1) // BLOCK * BLOCK
    assert out == ref
    torch.testing.assert_close(cached_logits, ref_logits, atol=1e-4, rtol=1e-4)

    # second turn: the first turn's prompt and answer are a prefix of it
    answer = proc.tokenizer.decode(first.output_ids, skip_special_tokens=True)
    second = seq_for(proc, [q1, answer, "And what colour is it?"], [img])
    shared = shared_prefix(second.prompt_ids, first.prompt_ids + first.output_ids)
    assert shared >= len(first.prompt_ids)
    out = serve(engine, [second])[0]
    assert second.cached_tokens >= 0.8 * shared
    assert out == uncached(ours, second)


def test_no_hit_across_different_images_of_equal_size(ours, proc):
    pc = PrefixCache(kv_mb=64, vision_mb=16, block_size=BLOCK)
    engine = Engine(ours, max_batch=1, max_len=512, prefix_cache=pc)
    q = "What is in the image?"
    a, b = seq_for(proc, [q], [image(150, 100, seed=1)]), seq_for(proc, [q], [image(150, 100, seed=2)])
    assert a.prompt_ids == b.prompt_ids   # token ids alone cannot tell them apart
    serve(engine, [a])
    out = serve(engine, [b])[0]
    first_pad = b.prompt_ids.index(ours.config.image_token_id)
    assert b.cached_tokens <= first_pad   # only the text before the image
    assert pc.stats["vision_hits"] == 0
    assert out == uncached(ours, b)


def test_keys_cover_content_and_grid():
    from qwenvl.config import PRESETS
    cfg = PRESETS["3b"]
    pix = torch.randn(16, 8)
    square = media_items({"pixel_values": pix, "image_grid_thw": torch.tensor([[1, 4, 4]])}, cfg)
    wide = media_items({"pixel_values": pix, "image_grid_thw": torch.tensor([[1, 2, 8]])}, cfg)
    other = media_items({"pixel_values": pix + 1e-3, "image_grid_thw": torch.tensor([[1, 4, 4]])}, cfg)
    assert square[0].digest != wide[0].digest and square[0].digest != other[0].digest
    assert square[0].tokens == 4
    ids = [1, 2, 3] + [cfg.image_token_id] * 4 + [5, 6, 7, 8, 9]
    ka, kb = block_keys(ids, square, cfg, 4), block_keys(ids, other, cfg, 4)
    assert len(ka) == 3
    assert ka[0] != kb[0]                # the first block holds the image's first pad token
    assert block_keys(ids[:4] + [0] * 8, square, cfg, 4)[0] == ka[0]   # a key depends on its block only
    with pytest.raises(ValueError, match="pad tokens"):
        block_keys([cfg.image_token_id] * 5, square, cfg, 4)


def test_eviction_under_a_small_budget(ours, proc):
    cfg = ours.config.text
    block_bytes = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * BLOCK * cfg.head_dim * 4
    one = seq_for(proc, ["Describe the first picture."], [image(150, 100, 3)])
    blocks_per_prompt = (len(one.prompt_ids) + GREEDY.max_new_tokens) // BLOCK
    budget = block_bytes * (blocks_per_prompt + 2)   # room for one conversation, not two
    pc = PrefixCache(kv_mb=budget / 2**20, vision_mb=16, block_size=BLOCK)
    engine = Engine(ours, max_batch=1, max_len=512, prefix_cache=pc)
    serve(engine, [one])
    serve(engine, [seq_for(proc, ["Describe the second picture."], [image(150, 100, 4)])])
    assert pc.kv.evictions > 0 and pc.kv.used <= budget
    back = seq_for(proc, ["Describe the first picture."], [image(150, 100, 3)])
    out = serve(engine, [back])[0]
    # the deepest blocks go first: the shared head of the prompt is still there, its tail was evicted
    assert 0 < back.cached_tokens < (len(back.prompt_ids) - 1) // BLOCK * BLOCK
    assert out == one.output_ids


def test_lru_drops_oldest_and_refuses_oversized():
    lru = LRUBytes(10)
    lru.put(b"a", 1, 4)
    lru.put(b"b", 2, 4)
    lru.get(b"a")                      # a is now the most recent
    lru.put(b"c", 3, 4)
    assert b"b" not in lru and b"a" in lru and b"c" in lru and lru.used == 8
    assert not lru.put(b"d", 4, 11) and b"d" not in lru


def test_vision_cache_serves_the_same_image_under_another_prefix(ours, proc):
    pc = PrefixCache(kv_mb=64, vision_mb=16, block_size=BLOCK)
    engine = Engine(ours, max_batch=1, max_len=512, prefix_cache=pc)
    img = image(120, 90, 5)
    other = seq_for(proc, ["Describe it."], [img], system="You are a poet who answers in verse.")
    with Calls(ours.visual.patch_embed) as tower:
        serve(engine, [seq_for(proc, ["Describe it."], [img], system="You are terse.")])
        assert tower.n == 1
        out = serve(engine, [other])[0]
    assert tower.n == 1 and pc.stats["vision_hits"] == 1
    assert out == uncached(ours, other)


def test_n_siblings_share_one_prefill_and_one_vision_pass(ours, proc):
    img = image(150, 100, 6)
    params = [SamplingParams(max_new_tokens=8, temperature=1.0, seed=s) for s in (11, 12, 13)]
    seqs = [seq_for(proc, ["Tell me about it."], [img], params=p) for p in params]
    for s in seqs[1:]:
        s.media = seqs[0].media
    engine = Engine(ours, max_batch=3, max_len=512)   # no prefix cache: the sharing is the fork itself
    with Calls(ours.visual.patch_embed) as tower, Calls(ours.language_model) as lm:
        engine.admit(seqs[0], seqs[1:])
        while engine.active:
            engine.step()
            for s in engine.active:
                if s.finished:
                    engine.release(s)
    assert tower.n == 1
    assert [n for n in lm.lengths if n > 1] == [len(seqs[0].prompt_ids)]   # one prefill; the rest are decode steps
    alone = [uncached(ours, s) for s in seqs]
    assert [s.output_ids for s in seqs] == alone   # each sibling samples with its own seed
    assert len({tuple(o) for o in alone}) > 1


def test_chunked_prefill_matches_unchunked_and_keeps_decoding(ours, proc):
    prompts = [seq_for(proc, ["Hi."]), seq_for(proc, ["Describe everything you see."], [image(200, 150, 7)]),
               seq_for(proc, ["A second question about a picture."], [image(150, 100, 8)])]
    plain = [uncached(ours, s) for s in prompts]
    for chunk, pc in ((8, None), (5, PrefixCache(kv_mb=64, vision_mb=16, block_size=BLOCK))):
        seqs = [Sequence(prompt_ids=list(s.prompt_ids), params=GREEDY, media=s.media) for s in prompts]
        engine = Engine(ours, max_batch=3, max_len=512, prefill_chunk=chunk, prefix_cache=pc)
        assert serve(engine, seqs) == plain

    # a running stream keeps getting tokens while a long prompt is prefilled chunk by chunk
    short = Sequence(prompt_ids=list(prompts[0].prompt_ids), params=SamplingParams(max_new_tokens=40,
                                                                                    temperature=0, ignore_eos=True))
    long = Sequence(prompt_ids=list(prompts[1].prompt_ids), params=GREEDY, media=prompts[1].media)
    engine = Engine(ours, max_batch=2, max_len=512, prefill_chunk=8)
    engine.add(short)
    engine.admit(long)
    during = 0
    while long.prefilling:
        during += any(s is short for s, _ in engine.step())
    assert during >= len(long.prompt_ids) // 8   # one decode step per chunk (and one for the media)
    while engine.active:
        engine.step()
        for s in engine.active:
            if s.finished:
                engine.release(s)
    assert long.output_ids == plain[1]


def test_failed_prefill_is_isolated(ours, proc):
    engine = Engine(ours, max_batch=2, max_len=512)
    ok = seq_for(proc, ["Hi."])
    bad = seq_for(proc, ["Look."], [image(150, 100)])
    engine.add(ok)
    with pytest.raises(ValueError, match="image_grid_thw"):   # pad tokens without a grid: refused at admission
        engine.admit(Sequence(prompt_ids=bad.prompt_ids, params=GREEDY))
    assert engine.free_slots() == 1
    bad.media = dict(bad.media, pixel_values=bad.media["pixel_values"][:-4])   # the tower raises in step()
    engine.admit(bad)
    pairs = engine.step()
    assert [s for s, _ in pairs] == [ok]
    assert engine.failed and engine.failed[0][0] is bad and "patches" in str(engine.failed[0][1])
    assert engine.free_slots() == 1 and not engine.prefills
    assert [s for s, _ in engine.step()] == [ok]


def test_stepwise_tower_equals_the_tower(ours, proc):
    s = seq_for(proc, ["x"], [image(200, 150, 9)])
    pixels, grid = s.media["pixel_values"], s.media["image_grid_thw"]
    engine = Engine(ours, max_batch=1, max_len=512, prefill_chunk=1)   # the smallest chunk: one block per step
    steps = engine._encode(pixels, grid)
    n = 0
    with torch.inference_mode():
        try:
            while True:
                next(steps)
                n += 1
        except StopIteration as done:
            feats = done.value
        ref = ours.visual(pixels, grid)
    assert n == ours.config.vision.depth
    assert torch.equal(feats, ref)


def test_siblings_take_over_a_prefill_whose_sequence_is_released(ours, proc):
    img = image(150, 100, 10)
    seqs = [seq_for(proc, ["Go on."], [img], params=SamplingParams(max_new_tokens=6, temperature=1.0, seed=s))
            for s in (1, 2, 3)]
    engine = Engine(ours, max_batch=3, max_len=512, prefill_chunk=4)
    with Calls(ours.visual.patch_embed) as tower:
        engine.admit(seqs[0], seqs[1:])
        for _ in range(3):
            engine.step()
        assert seqs[1].prefilling
        engine.release(seqs[0])   # the client of choice 0 went away mid-prefill
        while engine.active:
            engine.step()
            for s in engine.active:
                if s.finished:
                    engine.release(s)
    assert tower.n == 1 and seqs[0].finish_reason == "abort"
    assert [s.output_ids for s in seqs[1:]] == [uncached(ours, s) for s in seqs[1:]]


def test_pipeline_reuses_earlier_turns(own_ckpt):
    import qwenvl

    pipe = qwenvl.load(own_ckpt, dtype="float32")
    img = image(150, 100, 11)
    turn1 = [{"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": "Describe."}]}]
    plain = pipe.chat(turn1, max_new_tokens=6, temperature=0)
    pipe.prefix_cache = PrefixCache(kv_mb=16, vision_mb=4, block_size=BLOCK)
    first = pipe.chat(turn1, max_new_tokens=6, temperature=0)
    turn2 = turn1 + [{"role": "assistant", "content": first.text}, {"role": "user", "content": "More."}]
    streamed = "".join(pipe.stream(turn2, max_new_tokens=6, temperature=0))
    second = pipe.chat(turn2, max_new_tokens=6, temperature=0)
    assert first.token_ids == plain.token_ids and first.cached_tokens == 0
    assert second.cached_tokens >= 0.8 * first.prompt_tokens and second.text == streamed
    pipe.prefix_cache = None
    assert pipe.chat(turn2, max_new_tokens=6, temperature=0).token_ids == second.token_ids


def test_precomputed_features_are_keyed_by_their_content(ours, proc):
    s = seq_for(proc, ["What is it?"], [image(150, 100, 12)])
    with torch.inference_mode():
        feats = ours.visual(s.media["pixel_values"], s.media["image_grid_thw"])
    by_embeds = media_items({"image_embeds": feats, "image_grid_thw": s.media["image_grid_thw"]}, ours.config)
    other = media_items({"image_embeds": feats + 1, "image_grid_thw": s.media["image_grid_thw"]}, ours.config)
    assert by_embeds[0].tokens == feats.shape[0] and by_embeds[0].digest != other[0].digest
    pc = PrefixCache(kv_mb=16, vision_mb=4, block_size=BLOCK)
    engine = Engine(ours, max_batch=1, max_len=512, prefix_cache=pc)
    pre = Sequence(prompt_ids=s.prompt_ids, params=GREEDY,
                   media={"image_embeds": feats, "image_grid_thw": s.media["image_grid_thw"]})
    assert serve(engine, [pre])[0] == uncached(ours, s)


def test_match_ending_inside_an_image_takes_its_features_from_the_vision_cache(ours, proc):
    pc = PrefixCache(kv_mb=16, vision_mb=4, block_size=BLOCK)
    engine = Engine(ours, max_batch=1, max_len=512, prefix_cache=pc)
    img = image(150, 100, 13)
    a, b = seq_for(proc, ["What is it?"], [img]), seq_for(proc, ["Which colour is it?"], [img])
    pads = [i for i, t in enumerate(b.prompt_ids) if t == ours.config.image_token_id]
    with Calls(ours.visual.patch_embed) as tower:
        serve(engine, [a])
        out = serve(engine, [b])[0]
    assert pads[0] < b.cached_tokens <= pads[-1]   # the shared blocks end inside the image's span
    assert tower.n == 1 and pc.stats["vision_hits"] == 1
    assert out == uncached(ours, b)
