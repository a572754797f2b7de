"""The training step is the model's own forward: Policy's log-probabilities equal those read from
QwenVL.forward's full logits on the same unpacked sample (with an image, and text only: the dummy tower call)."""

from __future__ import annotations

import pytest
import torch

from qwenvl.model.text import Packed
from qwenvl.model.weights import load_model
from qwenvl.processing import Processor
from qwenvl.train.data import encode
from qwenvl.train.pack import IGNORE, collate
from qwenvl.train.step import Policy, run

from train_util import write_images


@pytest.fixture(scope="module")
def model_proc(own_ckpt):
    return load_model(own_ckpt), Processor.from_pretrained(own_ckpt)


def conversations(tmp_path):
    image = str(tmp_path / write_images(tmp_path / "images", 1)[0])
    return {
        "image": [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What is it?"}]},
                  {"role": "assistant", "content": "a red square"},
                  {"role": "user", "content": "And the colour?"}, {"role": "assistant", "content": "blue"}],
        "text": [{"role": "user", "content": "Say 3."}, {"role": "assistant", "content": "three people"}],
    }


@pytest.mark.parametrize("kind", ["image", "text"])
def test_policy_logps_equal_the_forward_logits(model_proc, tmp_path, kind):
    model, proc = model_proc
    messages = conversations(tmp_path)[kind]
    sample = encode(proc, messages, model.config)
    with torch.no_grad():
        logp, seg = run(Policy(model), collate([[sample]], pad_id=0))
        full = model(**proc(messages, add_generation_prompt=False)).logits[0].float().log_softmax(-1)
    sel = sample.targets != IGNORE
    want = full[sel].gather(-1, sample.targets[sel, None])[:, 0]
    assert len(want) > 3 and torch.equal(seg, torch.zeros_like(seg))
    torch.testing.assert_close(logp, want, rtol=1e-5, atol=1e-5)


def test_forward_training_arguments(model_proc):
    """logits_at picks rows of the full logits; packed segments each see only themselves."""
    model, proc = model_proc
    a = proc([{"role": "user", "content": "Hello!"}])["input_ids"]
    b = proc([{"role": "user", "content": "Describe the video."}])["input_ids"]
    with torch.no_grad():
        la, lb = model(a).logits, model(b).logits
        ids = torch.cat([a, b], 1)
        pos = torch.cat([model(a).positions, model(b).positions], -1)
        at = torch.zeros_like(ids, dtype=torch.bool)
        at[0, [0, a.shape[1] - 1, a.shape[1], ids.shape[1] - 1]] = True
        out = model(ids, positions=pos, packed=Packed((a.shape[1], b.shape[1])), logits_at=at).logits
    torch.testing.assert_close(out, torch.stack([la[0, 0], la[0, -1], lb[0, 0], lb[0, -1]]), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="attention_mask or packed"):
        model(ids, attention_mask=torch.ones_like(ids), packed=Packed((ids.shape[1],)))
