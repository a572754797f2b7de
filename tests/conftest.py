"""Shared fixtures: tiny random Qwen2.5-VL checkpoints written by transformers==4.51.3 (the oracle).

Each checkpoint directory holds what a released one holds (config.json, sharded safetensors with an
index, tokenizer, processor, chat template, generation config), so our loader sees the real layout.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hf_reference import build_hf_checkpoint, load_hf


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """Untied embeddings, 4.x key layout (`model.layers.*`, `visual.*`, `lm_head.*`)."""
    return build_hf_checkpoint(tmp_path_factory.mktemp("tiny_untied"))


@pytest.fixture(scope="session")
def tiny_ckpt_tied(tmp_path_factory) -> Path:
    return build_hf_checkpoint(tmp_path_factory.mktemp("tiny_tied"), tie_word_embeddings=True, seed=1)


@pytest.fixture(scope="session")
def hf_tiny(tiny_ckpt):
    return load_hf(tiny_ckpt)
