"""The engine against transformers' generate and against our own uncached forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from qwenvl.engine.engine import Engine, Sequence, generate
from qwenvl.engine.sampling import SamplingParams, filter_top_k_top_p, apply_repetition_penalty
from qwenvl.model.weights import load_model

MEDIA = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")


@pytest.fixture(scope="module")
def ours(tiny_ckpt):
    return load_model(tiny_ckpt)


def prompt(processor, text, images=None, videos=None, fps=None):
    content = [{"type": "image"} for _ in images or []] + [{"type": "video"} for _ in videos or []]
    conv = [{"role": "user", "content": content + [{"type": "text", "text": text}]}]
    kw = {"fps": fps} if videos else {}
    return processor(text=[processor.apply_chat_template(conv, add_generation_prompt=True)], images=images,
                     videos=videos, return_tensors="pt", **kw)


def image(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def seq_from(batch, params, eos=()):
    return Sequence(prompt_ids=batch["input_ids"][0].tolist(), params=params,
                    media={k: batch[k] for k in MEDIA if k in batch}, eos_ids=eos)


def run(model, seqs, max_batch=4, compile=False):
    engine = Engine(model, max_batch=max_batch, max_len=256, compile=compile)
    for _ in generate(engine, seqs):
        pass
    return [s.output_ids for s in seqs]


def test_greedy_matches_transformers_generate(hf_tiny, ours):
    hf, p = hf_tiny
    batch = prompt(p, "what is in the picture", images=[image(150, 100)])
    with torch.no_grad():
        ref = hf.generate(**batch, max_new_tokens=12, do_sample=False, eos_token_id=None, repetition_penalty=None)
    ref_new = ref[0, batch["input_ids"].shape[1]:].tolist()
    out = run(ours, [seq_from(batch, SamplingParams(max_new_tokens=12, temperature=0))])[0]
    assert out == ref_new


def test_greedy_with_repetition_penalty_and_video_matches_transformers(hf_tiny, ours):
    hf, p = hf_tiny
    frames = np.random.default_rng(3).integers(0, 256, (4, 56, 84, 3), dtype=np.uint8)
    batch = prompt(p, "describe the video", videos=[frames], fps=[4.0])
    with torch.no_grad():
        ref = hf.generate(**batch, max_new_tokens=10, do_sample=False, eos_token_id=None, repetition_penalty=1.3)
    out = run(ours, [seq_from(batch, SamplingParams(max_new_tokens=10, temperature=0, repetition_penalty=1.3))])[0]
    assert out == ref[0, batch["input_ids"].shape[1]:].tolist()


def test_cached_decoding_equals_full_recomputation(hf_tiny, ours):
    _, p = hf_tiny
    batch = prompt(p, "count", images=[image(90, 120, 1)])
    out = run(ours, [seq_from(batch, SamplingParams(max_new_tokens=8, temperature=0))])[0]
    ids = batch["input_ids"][0].tolist()
    media = {k: batch[k] for k in MEDIA if k in batch}
    for tok in out:  # each token is the argmax of an uncached forward over everything before it
        with torch.no_grad():
            logits = ours(torch.tensor([ids]), **media).logits[0, -1]
        assert int(logits.argmax()) == tok
        ids.append(tok)


def test_batched_equals_one_by_one(hf_tiny, ours):
    _, p = hf_tiny
    batches = [prompt(p, "a", images=[image(150, 100)]), prompt(p, "a much longer question than the first"),
               prompt(p, "two", images=[image(60, 60, 2), image(100, 50, 3)])]
    params = SamplingParams(max_new_tokens=9, temperature=0)
    single = [run(ours, [seq_from(b, params)], max_batch=1)[0] for b in batches]
    together = run(ours, [seq_from(b, params) for b in batches], max_batch=4)
    assert together == single
    # fewer slots than prompts: later ones join as earlier ones finish (continuous batching)
    assert run(ours, [seq_from(b, params) for b in batches], max_batch=2) == single


def test_compiled_decode_equals_eager(hf_tiny, ours):
    _, p = hf_tiny
    batches = [prompt(p, "a", images=[image(150, 100)]), prompt(p, "a much longer question than the first")]
    params = SamplingParams(max_new_tokens=6, temperature=0)
    engine = Engine(ours, max_batch=2, max_len=256, compile=True)
    assert isinstance(engine.decoder, torch._dynamo.eval_frame.OptimizedModule)
    assert run(ours, [seq_from(b, params) for b in batches], compile=True) == \
        run(ours, [seq_from(b, params) for b in batches])


def test_seeded_sampling_is_reproducible(hf_tiny, ours):
    _, p = hf_tiny
    batch = prompt(p, "tell me a story")
    params = SamplingParams(max_new_tokens=16, temperature=1.5, top_p=0.95, top_k=50, seed=123)
    a = run(ours, [seq_from(batch, params)])[0]
    b = run(ours, [seq_from(batch, params)])[0]
    c = run(ours, [seq_from(batch, SamplingParams(max_new_tokens=16, temperature=1.5, seed=7))])[0]
    assert a == b
    assert a != c


def test_eos_and_length_stop(hf_tiny, ours):
    _, p = hf_tiny
    batch = prompt(p, "hi")
    first = run(ours, [seq_from(batch, SamplingParams(max_new_tokens=5, temperature=0))])[0]
    s = seq_from(batch, SamplingParams(max_new_tokens=5, temperature=0), eos=(first[2],))
    run(ours, [s])
    assert s.output_ids == first[:3] and s.finish_reason == "stop"
    s = seq_from(batch, SamplingParams(max_new_tokens=5, temperature=0))
    run(ours, [s])
    assert len(s.output_ids) == 5 and s.finish_reason == "length"


def test_sampling_filters_match_reference_rules():
    logits = torch.tensor([1.0, 3.0, 2.0, 0.5, -1.0])
    k = filter_top_k_top_p(logits, 2, None)
    assert torch.isinf(k[[0, 3, 4]]).all() and not torch.isinf(k[[1, 2]]).any()
    probs = logits.softmax(-1)
    p = filter_top_k_top_p(logits, None, float(probs[1]) + 1e-4)  # top token alone is just short of top_p
    assert (~torch.isinf(p)).sum() == 2
    pen = apply_repetition_penalty(torch.tensor([2.0, -2.0, 1.0]), torch.tensor([0, 1, 1]), 2.0)
    assert pen.tolist() == [1.0, -4.0, 1.0]


def test_sampling_params_validation_and_defaults():
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(TypeError, match="unknown sampling parameter"):
        SamplingParams.from_kwargs(temprature=1)
    official = {"do_sample": True, "temperature": 0.1, "top_p": 0.001, "top_k": 1, "repetition_penalty": 1.05}
    d = SamplingParams().with_defaults(official)
    assert (d.temperature, d.top_k, d.repetition_penalty) == (0.1, 1, 1.05)
    assert SamplingParams(temperature=0).with_defaults(official).greedy
    assert SamplingParams().with_defaults({}).greedy
