"""The network against transformers 4.51.3 on tiny random checkpoints, in float32.

Vision tower (images of several sizes incl. partial windows, videos, several items at once), MRoPE
positions (each rule of the issue), and logits (tied / untied embeddings, both key layouts)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from hf_reference import load_hf
from qwenvl.model.rope import mrope_positions
from qwenvl.model.weights import load_model

transformers = pytest.importorskip("transformers")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def image(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def video(frames: int, w: int, h: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (frames, h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def ours(tiny_ckpt):
    return load_model(tiny_ckpt)


def hf_batch(processor, conversations, images=None, videos=None, fps=None):
    texts = [processor.apply_chat_template(c, add_generation_prompt=True) for c in conversations]
    kwargs = {}
    if videos is not None:
        kwargs["fps"] = fps
    processor.tokenizer.padding_side = "left"
    return processor(text=texts, images=images, videos=videos, padding=True, return_tensors="pt", **kwargs)


IMG = {"type": "image"}
VID = {"type": "video"}


def user(*items, text="Describe."):
    return [{"role": "user", "content": [*items, {"type": "text", "text": text}]}]


# ---------------------------------------------------------------------------------------- vision tower

@pytest.mark.parametrize("size", [(56, 56), (150, 100), (300, 230), (28 * 9, 28 * 5), (640, 90)])
def test_vision_tower_images(hf_tiny, ours, size):
    hf, processor = hf_tiny
    b = processor.image_processor(images=[image(*size)], return_tensors="pt")
    with torch.no_grad():
        ref = hf.visual(b["pixel_values"], b["image_grid_thw"])
        out = ours.visual(b["pixel_values"], b["image_grid_thw"])
    assert out.shape == ref.shape
    assert rel_err(out, ref) <= 1e-5


def test_vision_tower_several_items_and_video(hf_tiny, ours):
    hf, processor = hf_tiny
    b = processor.image_processor(images=[image(150, 100), image(60, 200, 1)], return_tensors="pt")
    v = processor.image_processor(images=None, videos=[video(6, 120, 90)], return_tensors="pt")
    with torch.no_grad():
        for pixels, grid in ((b["pixel_values"], b["image_grid_thw"]),
                             (v["pixel_values_videos"], v["video_grid_thw"])):
            assert rel_err(ours.visual(pixels, grid), hf.visual(pixels, grid)) <= 1e-5
    assert v["video_grid_thw"][0, 0] == 3  # six frames -> three temporal patches


def test_full_attention_stays_within_a_frame(ours):
    """Changing frame 2 of a video must not change the features of frame 1 (attention per t-slice)."""
    g = torch.tensor([[2, 8, 8]])
    x = torch.randn(128, 1176)
    y = x.clone()
    y[64:] += 1.0
    with torch.no_grad():
        a, b = ours.visual(x, g), ours.visual(y, g)
    assert torch.allclose(a[:16], b[:16], atol=1e-6)
    assert not torch.allclose(a[16:], b[16:])


# ---------------------------------------------------------------------------------------- positions

def assert_positions(hf, batch):
    ref_pos, ref_delta = hf.get_rope_index(batch["input_ids"], batch.get("image_grid_thw"),
                                           batch.get("video_grid_thw"), batch.get("second_per_grid_ts"),
                                           batch["attention_mask"])
    pos, delta = mrope_positions(batch["input_ids"], hf_config_to_ours(hf), batch["attention_mask"],
                                 batch.get("image_grid_thw"), batch.get("video_grid_thw"),
                                 batch.get("second_per_grid_ts"))
    assert torch.equal(pos, ref_pos)
    assert torch.equal(delta, ref_delta.flatten())
    return pos, delta


def hf_config_to_ours(hf):
    from qwenvl.config import QwenVLConfig
    return QwenVLConfig.from_hf_dict(hf.config.to_dict())


def test_positions_one_image(hf_tiny):
    hf, p = hf_tiny
    batch = hf_batch(p, [user(IMG)], images=[image(150, 100)])
    pos, _ = assert_positions(hf, batch)
    ids = batch["input_ids"][0]
    img = (ids == hf.config.image_token_id).nonzero().flatten()
    start = int(img[0])
    # image: t = 0 offset, h/w = merged row/col; the text after it resumes at max + 1
    grid = batch["image_grid_thw"][0]
    gh, gw = int(grid[1]) // 2, int(grid[2]) // 2
    assert pos[0, 0, img].unique().tolist() == [start]
    assert pos[1, 0, img].max() == start + gh - 1 and pos[2, 0, img].max() == start + gw - 1
    after = int(img[-1]) + 1
    assert pos[0, 0, after] == start + max(gh, gw)


def test_positions_several_images(hf_tiny):
    hf, p = hf_tiny
    conv = [{"role": "user", "content": [IMG, {"type": "text", "text": "and"}, IMG, {"type": "text", "text": "?"}]}]
    assert_positions(hf, hf_batch(p, [conv], images=[image(150, 100), image(60, 200, 1)]))


@pytest.mark.parametrize("fps", [2.0, 4.0, 3.0, 0.5])
def test_positions_video_fractional_seconds(hf_tiny, fps):
    """fps 4 -> 0.5 s per temporal grid: t-indexes 0, 1, 2, ... (they must not collapse to 0)."""
    hf, p = hf_tiny
    batch = hf_batch(p, [user(VID, text="What happens after the video?")], videos=[video(8, 84, 56)], fps=[fps])
    pos, _ = assert_positions(hf, batch)
    ids = batch["input_ids"][0]
    vid = (ids == hf.config.video_token_id).nonzero().flatten()
    tps = hf.config.vision_config.tokens_per_second
    t_index = (pos[0, 0, vid] - pos[0, 0, vid[0]]).unique().tolist()
    assert t_index == [int(k * (2 / fps) * tps) for k in range(4)]
    after = int(vid[-1]) + 1  # text after a video starts at max over the three rows + 1
    assert pos[0, 0, after] == int(pos[:, 0, : after].max()) + 1


def test_positions_left_padded_batch(hf_tiny):
    hf, p = hf_tiny
    convs = [user(IMG, text="a long question about the picture here"), user(VID, IMG, text="short")]
    batch = hf_batch(p, convs, images=[image(150, 100), image(56, 84, 2)], videos=[video(4, 56, 56)], fps=[1.0])
    assert batch["attention_mask"][1].min() == 0 or batch["attention_mask"][0].min() == 0
    assert_positions(hf, batch)


def test_positions_text_only(hf_tiny):
    hf, p = hf_tiny
    batch = hf_batch(p, [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "a longer one"}]])
    assert_positions(hf, batch)


# ---------------------------------------------------------------------------------------- logits

def logits_match(hf, ours, batch):
    with torch.no_grad():
        ref = hf(**batch).logits
        out = ours(**batch).logits
    keep = batch["attention_mask"].bool()
    assert rel_err(out[keep], ref[keep]) <= 1e-5
    assert rel_err(out, ref) <= 1e-5  # padded positions too: same masking rule as the reference


def test_logits_image_video_batch(hf_tiny, ours):
    hf, p = hf_tiny
    convs = [user(IMG, text="what is it"), user(VID, IMG, text="and this video?")]
    batch = hf_batch(p, convs, images=[image(150, 100), image(56, 84, 2)], videos=[video(4, 84, 56)], fps=[4.0])
    logits_match(hf, ours, batch)


def test_logits_tied_embeddings(tiny_ckpt_tied):
    hf, p = load_hf(tiny_ckpt_tied)
    ours = load_model(tiny_ckpt_tied)
    assert ours.lm_head.weight is ours.language_model.embed_tokens.weight
    logits_match(hf, ours, hf_batch(p, [user(IMG)], images=[image(100, 140)]))


def to_new_layout(src, dst):
    """Rewrite a checkpoint in the transformers >= 4.52 / 5.x layout: renamed keys, nested text_config."""
    from safetensors.torch import load_file, save_file
    shutil.copytree(src, dst)
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    new_map = {}
    for shard in sorted(set(index["weight_map"].values())):
        tensors = load_file(dst / shard)
        renamed = {}
        for k, t in tensors.items():
            if k.startswith("model."):
                k = "model.language_model." + k[len("model."):]
            elif k.startswith("visual."):
                k = "model." + k
            renamed[k] = t
            new_map[k] = shard
        save_file(renamed, dst / shard, metadata={"format": "pt"})
    index["weight_map"] = new_map
    (dst / "model.safetensors.index.json").write_text(json.dumps(index))
    cfg = json.loads((dst / "config.json").read_text())
    text_keys = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "rope_theta", "hidden_act"]
    text = {k: cfg.pop(k) for k in text_keys}
    rope = cfg.pop("rope_scaling")
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": text.pop("rope_theta"),
                               "mrope_section": rope["mrope_section"]}
    cfg["text_config"] = text
    (dst / "config.json").write_text(json.dumps(cfg))


def test_logits_new_key_layout(tiny_ckpt, hf_tiny, tmp_path):
    hf, p = hf_tiny
    to_new_layout(tiny_ckpt, tmp_path / "new")
    ours = load_model(tmp_path / "new")
    logits_match(hf, ours, hf_batch(p, [user(IMG)], images=[image(150, 100)]))


def test_bfloat16_close_to_float32(tiny_ckpt, hf_tiny, ours):
    hf, p = hf_tiny
    batch = hf_batch(p, [user(IMG)], images=[image(150, 100)])
    bf = load_model(tiny_ckpt, dtype=torch.bfloat16)
    with torch.no_grad():
        ref = ours(**batch).logits
        out = bf(**batch).logits.float()
    assert bf.lm_head.weight.dtype == torch.bfloat16
    assert rel_err(out, ref) < 0.05


def test_layout_cached_under_inference_mode_is_usable_for_training():
    """Generation fills the layout cache under inference_mode; a later training step reuses it."""
    from qwenvl.model.vision import vision_layout
    with torch.inference_mode():
        layout = vision_layout(((1, 6, 10),), 2, 4)
    assert not layout.window_index.is_inference() and not layout.windows.groups[0].is_inference()
