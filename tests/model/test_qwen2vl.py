"""Qwen2-VL checkpoints (model_type qwen2_vl) against transformers 4.51.3's Qwen2VLForConditionalGeneration,
in float32: config fields, the vision tower (LayerNorm, QuickGELU fc1/fc2, no windows, LayerNorm merger),
frame-index video positions, logits for text, an image and a video, and greedy generation through
qwenvl.load (our processor, engine and pipeline)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import qwenvl
from hf_reference import build_hf_qwen2vl_checkpoint, load_hf_qwen2vl
from qwenvl.config import QwenVLConfig
from qwenvl.model.rope import mrope_positions
from qwenvl.model.vision_qwen2 import Qwen2VisionTransformer
from qwenvl.model.weights import load_model, save_model

transformers = pytest.importorskip("transformers")


def rel_err(a, b) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def image(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def video(frames, w, h, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (frames, h, w, 3), dtype=np.uint8)


def user(*items, text="Describe."):
    return [{"role": "user", "content": [*items, {"type": "text", "text": text}]}]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return build_hf_qwen2vl_checkpoint(tmp_path_factory.mktemp("qwen2vl"))


@pytest.fixture(scope="module")
def hf(ckpt):
    return load_hf_qwen2vl(ckpt)


@pytest.fixture(scope="module")
def ours(ckpt):
    return load_model(ckpt)


def hf_batch(processor, conversations, images=None, videos=None):
    texts = [processor.apply_chat_template(c, add_generation_prompt=True) for c in conversations]
    processor.tokenizer.padding_side = "left"
    return processor(text=texts, images=images, videos=videos, padding=True, return_tensors="pt")


def test_config_fields(ckpt, ours):
    d = json.loads((ckpt / "config.json").read_text())
    cfg = QwenVLConfig.from_hf_dict(d)
    v = d["vision_config"]
    assert cfg.model_type == "qwen2_vl"
    assert cfg.vision.hidden_size == v["embed_dim"] and cfg.vision.out_hidden_size == v["hidden_size"]
    assert cfg.vision.intermediate_size == int(v["embed_dim"] * v["mlp_ratio"]) == 160
    assert cfg.vision.hidden_act == "quick_gelu" and cfg.vision.fullatt_block_indexes == ()
    assert QwenVLConfig.from_hf_dict(cfg.to_hf_dict()) == cfg
    assert isinstance(ours.visual, Qwen2VisionTransformer)
    # the released Qwen2-VL-7B vision_config spelling (in_chans, spatial_patch_size, no hidden_act)
    released = {"depth": 32, "embed_dim": 1280, "mlp_ratio": 4, "num_heads": 16, "in_chans": 3, "hidden_size": 3584,
                "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14, "temporal_patch_size": 2}
    # (mapped on its own: beside this tiny text config, a 3584-wide merger output is refused)
    from qwenvl.config import VisionConfig, _qwen2_vl_vision
    r = VisionConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in _qwen2_vl_vision(released).items()})
    assert (r.hidden_size, r.out_hidden_size, r.intermediate_size, r.hidden_act) == (1280, 3584, 5120, "quick_gelu")


@pytest.mark.parametrize("size", [(56, 56), (150, 100), (300, 230)])
def test_vision_tower_images(hf, ours, size):
    model, processor = hf
    b = processor.image_processor(images=[image(*size)], return_tensors="pt")
    with torch.no_grad():
        ref = model.visual(b["pixel_values"], b["image_grid_thw"])
        out = ours.visual(b["pixel_values"], b["image_grid_thw"])
    assert out.shape == ref.shape
    assert rel_err(out, ref) <= 1e-5


def test_vision_tower_several_items_and_video(hf, ours):
    model, processor = hf
    b = processor.image_processor(images=[image(150, 100), image(60, 200, 1)], return_tensors="pt")
    v = processor.image_processor(images=None, videos=[video(6, 120, 90)], return_tensors="pt")
    with torch.no_grad():
        for pixels, grid in ((b["pixel_values"], b["image_grid_thw"]),
                             (v["pixel_values_videos"], v["video_grid_thw"])):
            assert rel_err(ours.visual(pixels, grid), model.visual(pixels, grid)) <= 1e-5


def test_attention_spans_the_whole_frame_not_windows(ours):
    """No window attention: a patch in one corner changes the features at the opposite corner of the frame
    (the Qwen2.5 tiny tower's 56 px windows would keep them apart), never those of another frame."""
    g = torch.tensor([[2, 16, 16]])
    x = torch.randn(512, 1176)
    y = x.clone()
    y[0] += 1.0
    with torch.no_grad():
        a, b = ours.visual(x, g), ours.visual(y, g)
    assert not torch.allclose(a[63], b[63])        # last merged unit of frame 1
    assert torch.allclose(a[64:], b[64:], atol=1e-6)  # frame 2


@pytest.mark.parametrize("fps", [None, 4.0])
def test_video_positions_are_frame_indexes(hf, fps):
    model, processor = hf
    texts = [processor.apply_chat_template(user({"type": "video"}), add_generation_prompt=True)]
    batch = processor(text=texts, videos=[video(8, 84, 56)], return_tensors="pt")
    cfg = QwenVLConfig.from_hf_dict(model.config.to_dict())
    ref, ref_delta = model.get_rope_index(batch["input_ids"], None, batch["video_grid_thw"], batch["attention_mask"])
    # timing is ignored: what our processor passes (0.5 s per grid at fps 4) changes nothing
    spg = None if fps is None else torch.tensor([2 / fps])
    pos, delta = mrope_positions(batch["input_ids"], cfg, batch["attention_mask"], None, batch["video_grid_thw"], spg)
    assert torch.equal(pos, ref) and torch.equal(delta, ref_delta.flatten())
    vid = (batch["input_ids"][0] == cfg.video_token_id).nonzero().flatten()
    assert (pos[0, 0, vid] - pos[0, 0, vid[0]]).unique().tolist() == [0, 1, 2, 3]


def logits_match(model, ours, batch):
    with torch.no_grad():
        ref = model(**batch).logits
        out = ours(**batch).logits
    assert rel_err(out[batch["attention_mask"].bool()], ref[batch["attention_mask"].bool()]) <= 1e-5
    assert rel_err(out, ref) <= 1e-5


def test_logits_text_image_video(hf, ours):
    model, processor = hf
    convs = [[{"role": "user", "content": "hello there"}], user({"type": "image"}, text="what is it"),
             user({"type": "video"}, {"type": "image"}, text="and this video?")]
    for conv, images, videos in ((convs[0], None, None), (convs[1], [image(150, 100)], None),
                                 (convs[2], [image(56, 84, 2)], [video(4, 84, 56)])):
        logits_match(model, ours, hf_batch(processor, [conv], images=images, videos=videos))


def test_logits_padded_batch(hf, ours):
    model, processor = hf
    convs = [user({"type": "image"}, text="a long question about the picture here"),
             user({"type": "video"}, text="short")]
    batch = hf_batch(processor, convs, images=[image(150, 100)], videos=[video(6, 56, 84)])
    assert int(batch["attention_mask"].min()) == 0
    logits_match(model, ours, batch)


def test_save_and_reload_keeps_the_family(ours, hf, tmp_path):
    save_model(ours, tmp_path / "out")
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["model_type"] == "qwen2_vl" and cfg["architectures"] == ["Qwen2VLForConditionalGeneration"]
    # transformers reads what we wrote
    ref = transformers.Qwen2VLForConditionalGeneration.from_pretrained(tmp_path / "out", torch_dtype=torch.float32,
                                                                      attn_implementation="eager").eval()
    model, processor = hf
    batch = hf_batch(processor, [user({"type": "image"})], images=[image(100, 140)])
    with torch.no_grad():
        assert rel_err(ref(**batch).logits, model(**batch).logits) <= 1e-6


def test_pipeline_generates_like_transformers(ckpt, hf):
    """qwenvl.load: our processor gives the reference's tokens and pixels, greedy decoding its tokens."""
    model, processor = hf
    pipe = qwenvl.load(ckpt, dtype="float32")
    frames = [Image.fromarray(f) for f in video(4, 84, 56, seed=3)]
    for item, media in (({"type": "image", "image": image(150, 100)}, "images"),
                        ({"type": "video", "video": frames, "fps": 2.0}, "videos")):
        messages = user(item, text="What is this?")
        ours = pipe.processor(messages)
        kind = "image" if media == "images" else "video"
        text = processor.apply_chat_template(user({"type": kind}, text="What is this?"), add_generation_prompt=True)
        arg = [item["image"]] if kind == "image" else [np.stack([np.asarray(f) for f in frames])]
        ref = processor(text=[text], return_tensors="pt", **{media: arg})
        assert torch.equal(ours["input_ids"], ref["input_ids"])
        key = "pixel_values" if kind == "image" else "pixel_values_videos"
        assert torch.allclose(ours[key], ref[key], atol=1e-5)
        with torch.no_grad():
            gen = model.generate(**ref, max_new_tokens=10, do_sample=False)
        result = pipe.chat(messages, max_new_tokens=10, temperature=0)
        assert result.token_ids == gen[0, ref["input_ids"].shape[1]:].tolist()


def test_tied_embeddings(tmp_path):
    """Qwen2-VL-2B ties the LM head to the embeddings."""
    path = build_hf_qwen2vl_checkpoint(tmp_path / "tied", tie_word_embeddings=True, seed=2)
    model, processor = load_hf_qwen2vl(path)
    ours = load_model(path)
    assert ours.lm_head.weight is ours.language_model.embed_tokens.weight
    logits_match(model, ours, hf_batch(processor, [user({"type": "video"})], videos=[video(4, 56, 84, 1)]))


def test_awq_qwen2vl_checkpoint(ckpt, hf, tmp_path):
    """Qwen2-VL-*-AWQ: the same 4-bit loading; logits match the float model the AWQ tensors define."""
    from awq_reference import make_awq_checkpoint
    from qwenvl.fast.int4 import Int4Linear
    from qwenvl.model.weights import their_key
    dequantized = make_awq_checkpoint(ckpt, tmp_path / "awq", group_size=64)
    from qwenvl.fast import load_checkpoint
    quant = load_checkpoint(tmp_path / "awq")
    assert isinstance(quant.visual, Qwen2VisionTransformer)
    assert isinstance(quant.language_model.layers[0].mlp.down_proj, Int4Linear)
    ref = load_model(ckpt)
    params = {their_key(k): p for k, p in ref.named_parameters()}
    with torch.no_grad():
        for name, w in dequantized.items():
            params[name].copy_(w)
    batch = hf_batch(hf[1], [user({"type": "image"})], images=[image(150, 100)])
    with torch.no_grad():
        assert rel_err(quant(**batch).logits, ref(**batch).logits) < 1e-5
