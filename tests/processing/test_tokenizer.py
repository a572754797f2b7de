"""Tokenizer wrapper against transformers' fast tokenizer, and the streaming detokenizer."""

from __future__ import annotations

import pytest

TEXTS = [
    "Hello world",
    "<|im_start|>user\nWhat is in the image?<|im_end|>\n<|im_start|>assistant\n",
    "<|vision_start|><|image_pad|><|image_pad|><|vision_end|>日本語 中文 🙂🎉 émoji <tool_call>{}</tool_call>",
]


@pytest.mark.parametrize("text", TEXTS)
def test_encode_decode_match_transformers(proc, hf_proc, text):
    ids = proc.encode_text(text)
    assert ids == hf_proc.tokenizer(text)["input_ids"]
    for skip in (False, True):
        assert proc.decode(ids, skip_special_tokens=skip) == hf_proc.tokenizer.decode(ids, skip_special_tokens=skip)
    assert proc.decode(ids) == text


def test_ids_and_sizes(proc, hf_proc):
    tok = proc.tokenizer
    assert tok.vocab_size == len(hf_proc.tokenizer)
    assert tok.token_to_id("<|image_pad|>") == hf_proc.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert tok.eos_token_id == hf_proc.tokenizer.eos_token_id
    assert tok.pad_token_id == hf_proc.tokenizer.pad_token_id


def test_stream_decoder_never_splits_characters(proc):
    text = "日本語 🙂 is 中文字符 🎉🎉 ünïcödé <|im_end|> done 🤖"
    ids = proc.encode_text(text)
    # the tiny vocabulary spells emoji as several byte tokens: the partial-character path is exercised
    assert any("\ufffd" in proc.decode(ids[:k]) for k in range(1, len(ids)))
    for skip in (True, False):
        dec = proc.stream_decoder(skip_special_tokens=skip)
        deltas = [dec.add(i) for i in ids]
        deltas.append(dec.flush())
        assert all("\ufffd" not in d for d in deltas)
        assert "".join(deltas) == proc.decode(ids, skip_special_tokens=skip)
