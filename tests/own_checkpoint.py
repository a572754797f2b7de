"""Tiny random Qwen2.5-VL checkpoints written by the project itself (qwenvl.tiny's assets,
model.weights.random_model + save_model): what a test needs when it does not compare with transformers.
A module of its own (not conftest) so tests in any folder can import it unambiguously."""

from __future__ import annotations

from pathlib import Path

import torch

from qwenvl.model.weights import random_model, save_model
from qwenvl.tiny import tiny_config, write_assets


def build_checkpoint(out: Path, *, tie_word_embeddings: bool = False, seed: int = 0, max_shard_bytes: int = 200_000,
                     **config_kwargs) -> Path:
    """The layout of a released checkpoint (config.json, sharded safetensors with an index, tokenizer,
    processor, chat template, generation config), with random weights."""
    ids, vocab = write_assets(out)
    cfg = tiny_config(ids, vocab_size=vocab + 6, tie_word_embeddings=tie_word_embeddings, **config_kwargs)
    model = random_model(cfg, seed=seed)
    # random_model leaves norms at one and biases at zero: perturb them (as the oracle's fixture does) so a
    # test that mixes them up or drops one sees a difference
    gen = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    save_model(model, out, max_shard_bytes=max_shard_bytes)
    return out
