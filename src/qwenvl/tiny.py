"""Tiny Qwen2.5-VL-shaped assets built locally: a byte-level BPE tokenizer with the Qwen special
tokens, the processor files and a small config.

Used by the tests (with random weights from transformers as the oracle), the benchmarks (random
weights for a preset) and the pipeline that trains our small default model. Nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

from .config import QwenVLConfig, TextConfig, VisionConfig

# Added tokens of Qwen2.5 in id order, appended after the base vocabulary.
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>",
    "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
]
# `<tool_call>` and the fim/repo tokens are not "special" in Qwen's tokenizer (they survive decoding).
NOT_SPECIAL = {"<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
               "<|repo_name|>", "<|file_sep|>"}

CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = """The quick brown fox jumps over the lazy dog. A picture shows a red square on a white background.
What is in the image? Describe the video. There is a cat, a dog, two birds and three people.
Locate the object and output the bbox coordinates in JSON format. The given query happens in 3.0 - 5.0 seconds.
{"bbox_2d": [12, 34, 56, 78], "label": "red square"} <points x1="10" y1="20" alt="dot">dot</points>
You are a helpful assistant. Hello! How can I help you today? Count the circles: 0 1 2 3 4 5 6 7 8 9 10.
The colour of the shape is blue, green, yellow, purple, orange, black or white. Left right top bottom.
日本語 中文 字符 。，？！ émoji ünïcödé
"""


# Qwen2's pre-tokenizer split (tokenizer.json of the released checkpoints): every digit is its own
# piece, so numbers (pixel coordinates above all) are spelled digit by digit.
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
              r"\s*[\r\n]+|\s+(?!\S)|\s+")


def build_tokenizer(vocab_size: int = 512, extra_text: list[str] | None = None, qwen_split: bool = False,
                    corpus: bool = True):
    """A byte-level BPE tokenizer trained on a small fixed corpus (plus `extra_text`), with Qwen's added
    tokens appended. `qwen_split` pre-tokenizes as Qwen2 does (NFC, single digits); `corpus=False`
    trains on `extra_text` alone."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers, AddedToken

    tok = Tokenizer(models.BPE())
    if qwen_split:
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator((_CORPUS.splitlines() * 4 if corpus else []) + list(extra_text or []), trainer=trainer)
    # one at a time, in id order: add_special_tokens would mark <tool_call> & co. special too, and decoding
    # would then drop them (Qwen's tokenizer.json has them "special": false)
    for t in SPECIAL_TOKENS:
        if t in NOT_SPECIAL:
            tok.add_tokens([AddedToken(t, special=False, normalized=False)])
        else:
            tok.add_special_tokens([AddedToken(t, special=True, normalized=False)])
    return tok


def token_ids(tok) -> dict[str, int]:
    return {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}


def write_tokenizer_files(out: Path, tok, *, model_max_length: int = 32768, chat_template: str = CHAT_TEMPLATE) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    added = {
        str(tok.token_to_id(t)): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                  "single_word": False, "special": t not in NOT_SPECIAL}
        for t in SPECIAL_TOKENS
    }
    cfg = {
        "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": added,
        "additional_special_tokens": [t for t in SPECIAL_TOKENS[1:14]],
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "model_max_length": model_max_length,
        "errors": "replace",
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "chat_template": chat_template,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))


def write_processor_files(out: Path, *, min_pixels: int = 3136, max_pixels: int = 12845056, patch_size: int = 14,
                          merge_size: int = 2, temporal_patch_size: int = 2,
                          chat_template: str = CHAT_TEMPLATE) -> None:
    out.mkdir(parents=True, exist_ok=True)
    pre = {
        "min_pixels": min_pixels, "max_pixels": max_pixels, "patch_size": patch_size,
        "temporal_patch_size": temporal_patch_size, "merge_size": merge_size,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "do_convert_rgb": True, "resample": 3,
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor",
    }
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
    (out / "chat_template.json").write_text(json.dumps({"chat_template": chat_template}, indent=2))


def write_generation_config(out: Path, ids: dict[str, int]) -> None:
    gen = {"bos_token_id": ids["<|endoftext|>"], "pad_token_id": ids["<|endoftext|>"],
           "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]], "do_sample": False}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2))


def tiny_config(ids: dict[str, int], *, vocab_size: int, tie_word_embeddings: bool = False,
                vision_depth: int = 4, text_layers: int = 2, window_size: int = 56,
                fullatt_block_indexes: tuple[int, ...] = (1, 3), tokens_per_second: float = 2,
                hidden: int = 64, vision_hidden: int = 64) -> QwenVLConfig:
    """A small config of the same shape: vision head_dim 16, text head_dim 16 (mrope_section 2/3/3)."""
    return QwenVLConfig(
        vision=VisionConfig(depth=vision_depth, hidden_size=vision_hidden, intermediate_size=96, num_heads=4,
                            out_hidden_size=hidden, window_size=window_size, tokens_per_second=tokens_per_second,
                            fullatt_block_indexes=tuple(fullatt_block_indexes)),
        text=TextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=128, num_hidden_layers=text_layers,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                        rms_norm_eps=1e-6, mrope_section=(2, 3, 3), tie_word_embeddings=tie_word_embeddings),
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        vision_token_id=ids["<|vision_pad|>"],
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
    )


def write_assets(out: str | Path, *, vocab_size: int = 512, extra_text: list[str] | None = None,
                 qwen_split: bool = False, corpus: bool = True, chat_template: str = CHAT_TEMPLATE,
                 **processor_kwargs) -> tuple[dict[str, int], int]:
    """Tokenizer, processor, chat template and generation config into `out`.
    Returns the special token ids and the tokenizer's full vocabulary size."""
    out = Path(out)
    tok = build_tokenizer(vocab_size, extra_text, qwen_split=qwen_split, corpus=corpus)
    ids = token_ids(tok)
    write_tokenizer_files(out, tok, chat_template=chat_template)
    write_processor_files(out, chat_template=chat_template, **processor_kwargs)
    write_generation_config(out, ids)
    return ids, tok.get_vocab_size()
