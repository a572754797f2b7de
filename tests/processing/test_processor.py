"""Processor output against transformers 4.51.3's Qwen2_5_VLProcessor (slow image processor), fed the
media exactly as qwen-vl-utils hands them over: fetch_image's PIL images, fetch_video's frames + fps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from qwenvl.processing import ModelInputs, MediaInfo, Processor, fetch_image, fetch_video
from qwenvl.processing.chat import media_items, normalize_messages
from media_util import index_frame, write_video

INT_KEYS = ("input_ids", "attention_mask", "image_grid_thw", "video_grid_thw")


def _img(w, h, seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def reference(hf_proc, conversations, *, add_vision_id=False, padding_side="left"):
    """What qwen-vl-utils process_vision_info + the HF processor produce for these conversations."""
    texts, images, videos, fps = [], [], [], []
    for conv in conversations:
        texts.append(hf_proc.tokenizer.apply_chat_template(conv, chat_template=hf_proc.chat_template, tokenize=False,
                                                           add_generation_prompt=True, add_vision_id=add_vision_id))
        for item in media_items(normalize_messages(conv)):
            if item["type"] == "image":
                images.append(fetch_image(item))
            else:
                frames, f = fetch_video(item)
                if isinstance(item["video"], list):   # qwen-vl-utils hands over a list of PIL frames here
                    frames = [Image.fromarray(x.permute(1, 2, 0).to(torch.uint8).numpy()) for x in frames]
                videos.append(frames)
                fps.append(f)
    hf_proc.tokenizer.padding_side = padding_side
    kwargs = {"fps": fps} if videos else {}
    return hf_proc(text=texts, images=images or None, videos=videos or None, padding=True, return_tensors="pt",
                   **kwargs)


def assert_same(ours: ModelInputs, theirs):
    assert list(ours) == [k for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw",
                                      "pixel_values_videos", "video_grid_thw", "second_per_grid_ts") if k in theirs]
    for k in theirs:
        a, b = ours[k], theirs[k]
        if isinstance(b, list):            # 4.51 leaves second_per_grid_ts a list; ours is a float tensor
            b = torch.tensor(b)
        assert a.shape == b.shape, k
        if k in INT_KEYS:
            assert a.dtype == torch.long and torch.equal(a, b), k
        else:
            assert a.dtype == torch.float32, k
            assert (a - b.float()).abs().max().item() <= 1e-3, k


def check(proc, hf_proc, conversations, **kw):
    batched = isinstance(conversations[0], list)
    convs = conversations if batched else [conversations]
    ours = proc(conversations, **kw)
    assert_same(ours, reference(hf_proc, convs, **kw))
    return ours


def test_text_only(proc, hf_proc):
    b = check(proc, hf_proc, [{"role": "user", "content": "Hello! How can I help you today?"}])
    assert b.media == [[]]


def test_one_image(proc, hf_proc):
    b = check(proc, hf_proc, [{"role": "user", "content": [{"type": "image", "image": _img(97, 61, 0)},
                                                          {"type": "text", "text": "What is in the image?"}]}])
    assert b.media == [[MediaInfo("image", (97, 61), (84, 56), (1, 4, 6), None, 1)]]
    assert (b["input_ids"] == proc.image_token_id).sum() == 6


def test_images_of_many_sizes_and_options(proc, hf_proc):
    content = [
        {"type": "image", "image": _img(33, 17, 1)},                               # tiny, odd: scaled up to >= 4 tokens
        {"type": "text", "text": "then"},
        {"image": _img(131, 77, 2), "max_pixels": 28 * 28 * 6},
        {"type": "image", "image": _img(50, 90, 3), "min_pixels": 28 * 28 * 20},
        {"type": "image_url", "image_url": {"url": np.asarray(_img(45, 45, 4))}},
        {"type": "image", "image": _img(60, 40, 5), "resized_height": 70, "resized_width": 100},
        {"type": "text", "text": "Which is largest?"},
    ]
    b = check(proc, hf_proc, [{"role": "user", "content": content}])
    sizes = [m.input_size for m in b.media[0]]
    assert sizes[0] == (84, 56)            # 17x33 is scaled up to min_pixels
    assert sizes[4] == (112, 56)           # resized 70x100: round(70/28) = round(2.5) = 2 (banker's)
    assert b["image_grid_thw"].tolist()[0] == [1, 4, 6]


def test_interleaved_with_vision_ids(proc, hf_proc):
    conv = [{"role": "user", "content": [{"type": "image", "image": _img(64, 64, 6)},
                                         {"type": "text", "text": "is like"},
                                         {"type": "image", "image": _img(80, 40, 7)},
                                         {"type": "text", "text": "?"}]}]
    check(proc, hf_proc, conv)
    check(proc, hf_proc, conv, add_vision_id=True)


def test_system_and_multi_turn(proc, hf_proc):
    conv = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "image", "image": _img(70, 50, 8)}, {"type": "text", "text": "Colour?"}]},
        {"role": "assistant", "content": "Red."},
        {"role": "user", "content": [{"type": "text", "text": "And this one?"}, {"image": _img(50, 70, 9)}]},
    ]
    check(proc, hf_proc, conv)


def test_video_as_frames(proc, hf_proc):
    frames = [Image.fromarray(index_frame(k)) for k in range(5)]
    b = check(proc, hf_proc, [{"role": "user", "content": [{"type": "video", "video": frames, "fps": 4.0},
                                                          {"type": "text", "text": "Describe the video."}]}])
    assert b["video_grid_thw"].tolist() == [[3, 4, 4]]                    # 5 frames padded to 6
    assert b["second_per_grid_ts"].tolist() == [0.5]
    assert b.media[0][0] == MediaInfo("video", (64, 48), (56, 56), (3, 4, 4), 4.0, 6)


def test_video_file(proc, hf_proc, tmp_path):
    path = write_video(tmp_path / "v.mp4", 20, fps=10)                     # 2 s: 4 frames at 2 fps
    b = check(proc, hf_proc, [{"role": "user", "content": [{"type": "video", "video": str(path)},
                                                          {"type": "text", "text": "What happens?"}]}])
    assert b["video_grid_thw"].tolist() == [[2, 20, 28]]                   # scaled up to the 280x392 floor
    assert b["second_per_grid_ts"].tolist() == [1.0]
    assert (b["input_ids"] == proc.video_token_id).sum() == 2 * 10 * 14
    m = b.media[0][0]
    assert (m.kind, m.original_size, m.input_size, m.fps, m.num_frames) == ("video", (64, 48), (392, 280), 2.0, 4)


def test_left_padded_batch(proc, hf_proc, clip):
    a = [{"role": "user", "content": [{"type": "image", "image": _img(90, 60, 10)}, {"type": "text", "text": "Hi"}]}]
    b = [{"role": "system", "content": "Be brief."},
         {"role": "user", "content": [{"type": "video", "video": str(clip), "min_pixels": 3136, "fps": 1.0},
                                      {"type": "image", "image": _img(40, 100, 11)},
                                      {"type": "text", "text": "Count the circles."}]}]
    out = check(proc, hf_proc, [a, b])
    assert [len(m) for m in out.media] == [1, 2]
    assert out["attention_mask"][0, 0] == 0 and out["attention_mask"][:, -1].all()
    assert out["input_ids"][0, 0] == proc.tokenizer.pad_token_id
    right = proc([a, b], padding_side="right")
    assert right["attention_mask"][0, -1] == 0
    assert torch.equal(right["input_ids"][0][right["attention_mask"][0].bool()],
                       out["input_ids"][0][out["attention_mask"][0].bool()])


def test_prepare_and_batch_to(proc):
    conv = [{"role": "user", "content": [{"type": "image", "image": _img(30, 30, 12)}, {"type": "text", "text": "x"}]}]
    text, images, videos, media = proc.prepare(conv)
    assert text.count("<|image_pad|>") == 1 and len(images) == 1 and videos == [] and media[0].grid_thw == (1, 4, 4)
    b = proc(conv).to("cpu", dtype=torch.bfloat16)
    assert b["pixel_values"].dtype == torch.bfloat16 and b["input_ids"].dtype == torch.long and b.media


def test_errors_name_the_item(proc, assets, tmp_path):
    def run(item):
        proc([{"role": "user", "content": [{"type": "text", "text": "a"}, item]}])

    with pytest.raises(ValueError, match=r"image 1 .*missing\.png.*not found"):
        run({"type": "image", "image": str(tmp_path / "missing.png")})
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match=r"image 1 .*bad\.png.*could not decode"):
        run({"type": "image", "image": str(bad)})
    with pytest.raises(ValueError, match=r"image 1 .*aspect ratio"):
        run({"type": "image", "image": _img(1000, 4, 0)})
    one = write_video(tmp_path / "one.mp4", 1)
    with pytest.raises(ValueError, match=r"video 1 .*one\.mp4.*1 frame"):
        run({"type": "video", "video": str(one)})
    with pytest.raises(ValueError, match=r"messages\[0\]\.content\[1\]"):
        run({"type": "image"})
    # a pad token typed into the text would break the expansion: refused clearly
    with pytest.raises(ValueError, match="<\\|image_pad\\|> tokens for 0 images"):
        proc([{"role": "user", "content": "<|image_pad|>"}])

    short = Processor.from_pretrained(assets, max_length=40)
    with pytest.raises(ValueError, match=r"prompt has \d+ tokens \(16 visual\), over the model's context of 40"):
        short([{"role": "user", "content": [{"type": "image", "image": _img(112, 112, 0)}]}])
    assert short([{"role": "user", "content": "hi"}])["input_ids"].shape[1] <= 40


def test_checkpoint_bounds_tighter_than_qwen_vl_utils(tmp_path, clip):
    """A preprocessor_config whose max_pixels is below what fetch_image produced: the HF image processor
    resizes again, and so do we."""
    transformers = pytest.importorskip("transformers")
    from qwenvl.tiny import write_assets

    write_assets(tmp_path, max_pixels=28 * 28 * 8)
    hf = transformers.AutoProcessor.from_pretrained(tmp_path)
    ours = Processor.from_pretrained(tmp_path)
    conv = [{"role": "user", "content": [{"type": "image", "image": _img(200, 150, 13)},
                                         {"type": "video", "video": str(clip), "nframes": 4},
                                         {"type": "text", "text": "?"}]}]
    b = ours(conv)
    assert_same(b, reference(hf, [conv]))
    assert b.media[0][0].input_size == (84, 56) and b.media[0][1].input_size == (84, 56)
