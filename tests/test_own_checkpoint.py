"""The checkpoint the tests write with the project's own code is a real one: our loader and processor
read it, and transformers 4.51.3 (the oracle) loads it to the same logits."""

from __future__ import annotations

import json

import pytest
import torch

from qwenvl.model.weights import load_model
from qwenvl.processing import Processor


def test_layout_and_load(own_ckpt, own_ckpt_tied):
    index = json.loads((own_ckpt / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1                       # sharded, as released ones are
    assert "lm_head.weight" in index["weight_map"] and "visual.merger.ln_q.weight" in index["weight_map"]
    tied = json.loads((own_ckpt_tied / "model.safetensors.index.json").read_text())
    assert "lm_head.weight" not in tied["weight_map"]
    model = load_model(own_ckpt)
    assert not torch.equal(model.language_model.norm.weight, torch.ones_like(model.language_model.norm.weight))
    proc = Processor.from_pretrained(own_ckpt)
    assert proc.tokenizer.decode(proc.tokenizer.encode("Hello")) == "Hello"


def test_transformers_reads_it_to_the_same_logits(own_ckpt):
    transformers = pytest.importorskip("transformers")
    hf = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(
        own_ckpt, torch_dtype=torch.float32, attn_implementation="eager").eval()
    proc = Processor.from_pretrained(own_ckpt)
    batch = proc([{"role": "user", "content": "What is in the image? Describe the video."}])
    ours = load_model(own_ckpt)
    with torch.no_grad():
        a = ours(**batch).logits
        b = hf(**batch).logits
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
