"""The chat template rendered as transformers renders it, message normalisation and its errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qwenvl.processing import Processor
from qwenvl.processing.chat import load_chat_template, normalize_messages
from qwenvl.tiny import CHAT_TEMPLATE, write_assets

IMG = np.zeros((30, 40, 3), np.uint8)

CONVERSATIONS = {
    "string": [{"role": "user", "content": "Hello!"}],
    "image_text": [{"role": "user", "content": [{"type": "image", "image": "a.png"}, {"type": "text", "text": "What?"}]}],
    "untyped_image": [{"role": "user", "content": [{"image": "a.png"}, {"text": "Describe."}]}],
    "openai": [{"role": "user", "content": [
        {"type": "text", "text": "Compare "},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "text", "text": " and "},
        {"type": "image_url", "image_url": "b.png"}]}],
    "system_multiturn": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "image", "image": "a.png"}, {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": [{"type": "video", "video": ["f1.png", "f2.png"]}, {"type": "text", "text": "And this?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A dog."}]},
        {"role": "user", "content": "Thanks 日本語 🙂"}],
}


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
@pytest.mark.parametrize("vision_id", [False, True])
@pytest.mark.parametrize("gen", [True, False])
def test_template_matches_transformers(proc, hf_proc, name, vision_id, gen):
    conv = CONVERSATIONS[name]
    ours = proc.apply_chat_template(conv, add_generation_prompt=gen, add_vision_id=vision_id)
    # transformers 4.51's processor.apply_chat_template drops add_vision_id; its tokenizer passes it on
    theirs = hf_proc.tokenizer.apply_chat_template(conv, chat_template=hf_proc.chat_template, tokenize=False,
                                                   add_generation_prompt=gen, add_vision_id=vision_id)
    assert ours == theirs
    if not vision_id:
        assert ours == hf_proc.apply_chat_template(conv, add_generation_prompt=gen)


def test_openai_video_url_is_a_video(proc):
    # the template itself knows nothing of video_url (transformers drops such items): we map it to video
    conv = [{"role": "user", "content": CONVERSATIONS["openai"][0]["content"] + [
        {"type": "video_url", "video_url": {"url": "clip.mp4"}}]}]
    text = proc.apply_chat_template(conv, add_vision_id=True)
    assert "Picture 1: <|vision_start|><|image_pad|>" in text and "Picture 2: " in text
    assert text.count("Video 1: <|vision_start|><|video_pad|><|vision_end|>") == 1


def test_batch_and_tokenize(proc):
    convs = [CONVERSATIONS["string"], CONVERSATIONS["image_text"]]
    texts = proc.apply_chat_template(convs)
    assert len(texts) == 2 and texts[0].endswith("<|im_start|>assistant\n")
    assert proc.apply_chat_template(convs[0], tokenize=True) == proc.encode_text(texts[0])


def test_normalised_forms():
    msgs = normalize_messages([{"role": "user", "content": [
        {"image": IMG, "max_pixels": 100}, {"type": "image_url", "image_url": {"url": "x.png"}},
        {"type": "video_url", "video_url": "v.mp4", "fps": 1.0}, "plain", {"text": "t"}]}])
    c = msgs[0]["content"]
    assert c[0]["type"] == "image" and c[0]["image"] is IMG and c[0]["max_pixels"] == 100
    assert c[1] == {"type": "image", "image": "x.png"}
    assert c[2] == {"type": "video", "video": "v.mp4", "fps": 1.0}
    assert c[3] == {"type": "text", "text": "plain"} and c[4] == {"type": "text", "text": "t"}


@pytest.mark.parametrize("messages, pattern", [
    ([{"role": "robot", "content": "hi"}], r"messages\[0\].*unknown role 'robot'"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": [{"type": "audio", "audio": "x"}]}],
     r"messages\[1\]\.content\[0\].*unknown content item.*audio"),
    ([{"role": "user", "content": [{"type": "image"}]}], r"messages\[0\]\.content\[0\].*image item has no source"),
    ([{"role": "user", "content": [{"type": "video_url", "video_url": {}}]}], r"content\[0\].*video item has no source"),
    ([{"role": "user", "content": [{"type": "text", "text": 3}]}], r"content\[0\].*text"),
    (["hello"], r"messages\[0\] must be a dict"),
])
def test_bad_messages(messages, pattern):
    with pytest.raises(ValueError, match=pattern):
        normalize_messages(messages)


def test_template_sources_and_helpers(tmp_path):
    write_assets(tmp_path)
    assert load_chat_template(tmp_path) == CHAT_TEMPLATE            # chat_template.json
    (tmp_path / "chat_template.json").unlink()
    assert load_chat_template(tmp_path) == CHAT_TEMPLATE            # tokenizer_config.json
    custom = ("{% if tools %}{{ tools | tojson }}{% endif %}{% for m in messages %}"
              "{% if m['role'] == 'tool' %}{{ raise_exception('no tools here') }}{% endif %}"
              "[{{ m['role'] }}]{{ m['content'] }}{{ eos_token }}\n{% endfor %}")
    (tmp_path / "chat_template.jinja").write_text(custom)
    proc = Processor.from_pretrained(tmp_path)
    text = proc.apply_chat_template([{"role": "user", "content": "<b>é</b>"}], tools=[{"name": "f<x>"}])
    assert text == '[{"name": "f<x>"}][user]<b>é</b><|im_end|>\n'   # tojson does not HTML-escape
    with pytest.raises(Exception, match="no tools here"):
        proc.apply_chat_template([{"role": "tool", "content": "x"}])
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    del cfg["chat_template"]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    (tmp_path / "chat_template.jinja").unlink()
    with pytest.raises(FileNotFoundError, match="no chat template"):
        Processor.from_pretrained(tmp_path)
