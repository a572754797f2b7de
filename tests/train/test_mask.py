"""The supervised mask comes from where the chat template writes each assistant reply
(chat.render_with_spans): the same masks as the earlier rule, which found the replies by decoding tokens
back to text (kept here as the reference), on multi-turn, system, tool, image, video and whitespace cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from qwenvl.processing import chat
from qwenvl.train.data import BadRecord, encode
from qwenvl.train.pack import IGNORE


def decoded_mask(ids: list[int], tok) -> list[bool]:
    """The earlier rule: after `<|im_start|>assistant` and its newline token, through `<|im_end|>` and the
    token after it when that starts with a newline."""
    im_start, im_end = tok.token_to_id("<|im_start|>"), tok.token_to_id("<|im_end|>")
    role = tok.encode("assistant")
    mask, i, n = [False] * len(ids), 0, len(ids)
    while i < n:
        if ids[i] == im_start and ids[i + 1:i + 1 + len(role)] == role:
            j = i + 1 + len(role)
            if j < n and tok.decode([ids[j]]) == "\n":
                j += 1
            k = j
            while k < n and ids[k] != im_end:
                k += 1
            end = min(k + 1, n)
            if end < n and tok.decode([ids[end]]).startswith("\n"):
                end += 1
            mask[j:end] = [True] * (end - j)
            i = end
        else:
            i += 1
    return mask


def supervised(sample) -> torch.Tensor:
    return torch.cat([torch.tensor([False]), sample.targets[:-1] != IGNORE])  # unshift


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("mask_media")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (56, 84, 3), dtype=np.uint8)).save(d / "a.png")
    frames = [Image.fromarray(rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)) for _ in range(4)]
    return str(d / "a.png"), frames


def conversations(image, frames):
    call = {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    return {
        "multi_turn": ([{"role": "user", "content": "What is in the image?"}, {"role": "assistant", "content": "a cat"},
                        {"role": "user", "content": "And the colour?"}, {"role": "assistant", "content": "blue, green"},
                        {"role": "user", "content": "Count."}, {"role": "assistant", "content": "two birds"}],
                       "a cat<|im_end|>\nblue, green<|im_end|>\ntwo birds<|im_end|>\n"),
        "system": ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"},
                    {"role": "assistant", "content": "Hello! How can I help you today?"}],
                   "Hello! How can I help you today?<|im_end|>\n"),
        "tool": ([{"role": "user", "content": "Weather in Paris?"},
                  {"role": "assistant", "content": "", "tool_calls": [call]},
                  {"role": "tool", "content": '{"temp": 21}'},
                  {"role": "assistant", "content": "It is 21 degrees."}],
                 '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n'
                 "It is 21 degrees.<|im_end|>\n"),
        "image": ([{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What is it?"}]},
                   {"role": "assistant", "content": "a red square"},
                   {"role": "user", "content": [{"type": "text", "text": "And this?"}, {"type": "image", "image": image}]},
                   {"role": "assistant", "content": "the same"}],
                  "a red square<|im_end|>\nthe same<|im_end|>\n"),
        "video": ([{"role": "user", "content": [{"type": "video", "video": frames, "fps": 2.0},
                                                {"type": "text", "text": "Describe the video."}]},
                   {"role": "assistant", "content": "a dog runs"}],
                  "a dog runs<|im_end|>\n"),
        "whitespace": ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "\n\n  spaced out "},
                        {"role": "user", "content": "Again"}, {"role": "assistant", "content": " lead"}],
                       None),
    }


@pytest.mark.parametrize("name", ["multi_turn", "system", "tool", "image", "video", "whitespace"])
def test_mask_matches_the_decoding_rule(proc, config, media, name):
    messages, expected_text = conversations(*media)[name]
    s = encode(proc, messages, config, name)
    mask = supervised(s)
    assert mask.tolist() == decoded_mask(s.input_ids.tolist(), proc.tokenizer)
    if expected_text is not None:
        assert proc.tokenizer.decode(s.input_ids[mask].tolist()) == expected_text
    assert not mask[s.input_ids == config.image_token_id].any() and not mask[s.input_ids == config.video_token_id].any()


def test_spans_are_the_replies_in_the_rendered_text(proc):
    messages = chat.normalize_messages(conversations("x.png", [])["multi_turn"][0])
    text, spans = chat.render_with_spans(proc.chat_template, messages)
    assert [text[a:b] for a, b in spans] == ["a cat<|im_end|>\n", "blue, green<|im_end|>\n", "two birds<|im_end|>\n"]
    assert text == chat.render(proc.chat_template, messages, add_generation_prompt=False)


def test_a_conversation_opening_with_a_reply_is_a_bad_record(proc, config):
    with pytest.raises(BadRecord, match=r"x:3: messages\[0\]: cannot locate this assistant reply"):
        encode(proc, [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "?"},
                      {"role": "assistant", "content": "ok"}], config, "x:3")


def test_a_template_that_rewrites_earlier_turns_is_refused(proc):
    # a template that writes only the last assistant reply in full (as reasoning templates drop earlier thoughts)
    template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'assistant' and not loop.last %}"
                "...{% else %}{{ m['content'] }}{% endif %}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    messages = chat.normalize_messages(conversations("x.png", [])["multi_turn"][0])
    with pytest.raises(ValueError, match=r"messages\[1\]: .*renders the earlier turns differently"):
        chat.render_with_spans(template, messages)
