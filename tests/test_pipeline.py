"""The public Python API end to end: qwenvl.load -> processor, model, chat, stream (against transformers)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import qwenvl
from hf_reference import load_hf
from qwenvl.errors import ContextLengthError


def image(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def pipe(tiny_ckpt):
    return qwenvl.load(tiny_ckpt, dtype="float32")


def conv(*items, text="What is this?"):
    return [{"role": "user", "content": [*items, {"type": "text", "text": text}]}]


def test_chat_matches_transformers_generate(pipe, hf_tiny):
    hf, proc = hf_tiny
    img = image(150, 100)
    messages = conv({"type": "image", "image": img})
    batch = pipe.processor(messages)
    ref_batch = proc(text=[proc.apply_chat_template(messages, add_generation_prompt=True)], images=[img],
                     return_tensors="pt")
    assert torch.equal(batch["input_ids"], ref_batch["input_ids"])
    with torch.no_grad():
        logits = pipe.model(**batch).logits
        ref_logits = hf(**ref_batch).logits
        ref = hf.generate(**ref_batch, max_new_tokens=12, do_sample=False)
    assert float((logits - ref_logits).norm() / ref_logits.norm()) < 1e-5
    result = pipe.chat(messages, max_new_tokens=12, temperature=0)
    assert result.token_ids == ref[0, ref_batch["input_ids"].shape[1]:].tolist()
    assert result.prompt_tokens == batch["input_ids"].shape[1]
    assert result.media[0].original_size == (150, 100) and result.media[0].input_size == (140, 112)


def test_stream_concatenates_to_chat_text(pipe):
    messages = conv({"type": "image", "image": image(80, 60)}, text="日本語 émoji")
    result = pipe.chat(messages, max_new_tokens=16, temperature=0)
    gen = pipe.stream(messages, max_new_tokens=16, temperature=0)
    deltas = []
    while True:
        try:
            deltas.append(next(gen))
        except StopIteration as stop:
            final = stop.value
            break
    assert "".join(deltas) == result.text == final.text
    assert final.token_ids == result.token_ids


def test_stop_strings_cut_the_text(pipe):
    messages = conv(text="hello there")
    full = pipe.chat(messages, max_new_tokens=12, temperature=0)
    assert len(full.text) > 4
    stop = full.text[3:5]
    cut = pipe.chat(messages, max_new_tokens=12, temperature=0, stop=[stop])
    assert cut.text == full.text[: full.text.find(stop)]
    assert cut.finish_reason == "stop"
    assert "".join(pipe.stream(messages, max_new_tokens=12, temperature=0, stop=[stop])) == cut.text


def test_batched_chat_equals_one_at_a_time(pipe):
    convs = [conv({"type": "image", "image": image(150, 100)}), conv(text="a longer text-only question here"),
             conv({"type": "image", "image": image(56, 200, 1)}, {"type": "image", "image": image(90, 90, 2)})]
    together = pipe.chat(convs, max_new_tokens=8, temperature=0)
    assert [r.token_ids for r in together] == [pipe.chat(c, max_new_tokens=8, temperature=0).token_ids
                                               for c in convs]


def test_seeded_sampling(pipe):
    m = conv(text="story")
    a = pipe.chat(m, max_new_tokens=10, temperature=1.0, top_k=50, seed=5)
    b = pipe.chat(m, max_new_tokens=10, temperature=1.0, top_k=50, seed=5)
    assert a.token_ids == b.token_ids


def test_prompt_longer_than_context(pipe):
    long = conv(text="the quick brown fox " * 1100)  # > 4096 tokens, the tiny model's context
    with pytest.raises(ContextLengthError, match="tokens.*context|context.*tokens"):
        pipe.chat(long, max_new_tokens=4)


def test_the_serving_api(pipe):
    """What a server builds on: a driver over the pipeline's model, raw-prompt sequences, prompt scoring."""
    from qwenvl.engine.driver import Finished

    assert pipe.context_length == pipe.config.text.max_position_embeddings
    ids = pipe.tokenizer.encode("The quick brown fox")
    params = pipe.sampling_params(max_new_tokens=5, temperature=0, ignore_eos=True, logprobs=2)
    seq = pipe.token_sequence(ids, params)
    assert seq.prompt_ids == ids and seq.eos_ids == pipe.eos_ids
    driver = pipe.driver(max_batch=2)
    assert driver.free_slots() == 2 and driver.engine.max_len == pipe.context_length
    (end,) = [e for e in driver.run([seq]) if isinstance(e, Finished)]
    assert end.text == pipe.tokenizer.decode(seq.output_ids, skip_special_tokens=True) and len(seq.output_ids) == 5
    with pytest.raises(ValueError, match=f"token id {pipe.vocab_size}"):
        pipe.token_sequence([1, pipe.vocab_size], params)
    # scoring the prompt and its answer gives the logprobs the engine reported while generating them
    scored = pipe.prompt_logprobs(ids + seq.output_ids, 2)
    assert scored[0] is None and [e.token for e in scored[1:]] == (ids + seq.output_ids)[1:]
    got = scored[len(ids):]
    assert [e.logprob for e in got] == pytest.approx([e.logprob for e in seq.logprobs], abs=1e-4)
    assert [[t for t, _ in e.top] for e in got] == [[t for t, _ in e.top] for e in seq.logprobs]


def test_hub_id_without_network_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="could not be downloaded|not installed"):
        qwenvl.load("nonexistent-org/nonexistent-model")


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        qwenvl.load(tmp_path / "nope" / "deeper")


def test_int8_pipeline_close_to_float(tiny_ckpt, pipe):
    from qwenvl.fast.int8 import Int8Linear
    q = qwenvl.load(tiny_ckpt, dtype="float32", quantize="int8")
    assert isinstance(q.model.lm_head, Int8Linear)
    msgs = [{"role": "user", "content": "hello there"}]
    ids = pipe.processor(msgs)["input_ids"]
    with torch.no_grad():
        ref, got = pipe.model(ids).logits, q.model(ids).logits
    assert float((got - ref).norm() / ref.norm()) < 0.02
    assert q.chat(msgs, max_new_tokens=4, temperature=0).finish_reason == "length"
    with pytest.raises(ValueError, match="quantize"):
        qwenvl.load(tiny_ckpt, quantize="int3")
