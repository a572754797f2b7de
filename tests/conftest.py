"""Shared fixtures: tiny random Qwen2.5-VL checkpoints.

`own_ckpt` / `own_ckpt_tied` are written by the project's own code (no transformers needed): use them
unless the test compares with transformers. `tiny_ckpt` / `tiny_ckpt_tied` / `hf_tiny` are written and
loaded by transformers==4.51.3, the oracle: for parity tests, and to check that we read its layout.

Each checkpoint directory holds what a released one holds (config.json, sharded safetensors with an
index, tokenizer, processor, chat template, generation config), so our loader sees the real layout.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hf_reference import build_hf_checkpoint, load_hf
from own_checkpoint import build_checkpoint


@pytest.fixture(scope="session")
def own_ckpt(tmp_path_factory) -> Path:
    """Untied embeddings, written by qwenvl itself (random_model + save_model, 4.x key layout)."""
    return build_checkpoint(tmp_path_factory.mktemp("own_untied"))


@pytest.fixture(scope="session")
def own_ckpt_tied(tmp_path_factory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("own_tied"), tie_word_embeddings=True, seed=1)


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
