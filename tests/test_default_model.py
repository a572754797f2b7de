"""The bundled small model: it ships inside the package, loads offline, has the architecture's parts, and
answers a fixed example as it did when it was shipped (scripts/build_default_model.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import qwenvl

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="module")
def pipe():
    if qwenvl.DEFAULT_MODEL is None:
        pytest.fail("no bundled default model in src/qwenvl/assets/default")
    return qwenvl.load(qwenvl.DEFAULT_MODEL, dtype="float32")


def test_it_is_small_and_complete():
    folder = Path(qwenvl.DEFAULT_MODEL)
    size = sum(f.stat().st_size for f in folder.iterdir())
    assert size <= 50 * 2**20
    for name in ("config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json",
                 "chat_template.json", "generation_config.json"):
        assert (folder / name).exists(), name


def test_it_is_the_qwen25vl_architecture(pipe):
    cfg = pipe.config
    assert cfg.model_type == "qwen2_5_vl"
    full = set(cfg.vision.fullatt_block_indexes)
    assert full and len(full) < cfg.vision.depth          # window attention between full-attention blocks
    assert sum(cfg.text.mrope_section) * 2 == cfg.text.head_dim
    assert cfg.vision.tokens_per_second > 0                 # MRoPE time aligned to seconds
    assert pipe.processor.tokenizer.encode("123") == [pipe.processor.tokenizer.encode(d)[0] for d in "123"]


def test_it_answers_the_fixed_examples(pipe):
    truth = json.loads((EXAMPLES / "truth.json").read_text())
    # Counting the shapes of examples/shapes.png (what the README's chat command asks).
    r = pipe.chat([{"role": "user", "content": [{"type": "image", "image": str(EXAMPLES / "shapes.png")},
                                                {"type": "text", "text": "How many shapes are there?"}]}],
                  temperature=0, max_new_tokens=8)
    assert r.text.strip() == str(truth["shapes.png"]["count"])
    # The span of the clip's event (what `qwenvl locate` asks), overlapping the truth at IoU >= 0.5.
    from qwenvl.tasks import parse_time_span, temporal_grounding_prompt

    clip = truth["clip.mp4"]
    r = pipe.chat([{"role": "user", "content": [{"type": "text", "text": temporal_grounding_prompt(clip["query"])},
                                                {"type": "video", "video": str(EXAMPLES / "clip.mp4")}]}],
                  temperature=0, max_new_tokens=32)
    span = parse_time_span(r.text)
    assert span is not None, r.text
    (s0, e0), (s1, e1) = span, clip["span"]
    inter = max(0.0, min(e0, e1) - max(s0, s1))
    assert inter / (max(e0, e1) - min(s0, s1)) >= 0.5, (r.text, clip["span"])
