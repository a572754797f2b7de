"""Tiny random Qwen2.5-VL checkpoints written by transformers==4.51.3 (the oracle), and loading them back.
A module of its own (not conftest) so tests in any folder can import it unambiguously."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qwenvl.tiny import tiny_config, write_assets


def build_hf_checkpoint(out: Path, *, tie_word_embeddings: bool = False, seed: int = 0,
                        max_shard_size: str = "200KB", **config_kwargs) -> Path:
    """Random HF model saved with save_pretrained (sharded), plus tokenizer and processor files."""
    transformers = pytest.importorskip("transformers")
    ids, vocab = write_assets(out)
    cfg = tiny_config(ids, vocab_size=vocab + 6, tie_word_embeddings=tie_word_embeddings, **config_kwargs)
    hf_cfg = transformers.Qwen2_5_VLConfig(**cfg.to_hf_dict())
    torch.manual_seed(seed)
    model = transformers.Qwen2_5_VLForConditionalGeneration(hf_cfg).eval()
    # Random init leaves the norms at one and biases at zero: perturb them so parity tests see them.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or "ln_q" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(out, max_shard_size=max_shard_size, safe_serialization=True)
    return out


def load_hf(path: Path):
    import transformers
    model = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(
        path, torch_dtype=torch.float32, attn_implementation="eager").eval()
    # the slow image processor is the default here; use_fast=False would also ask for a slow tokenizer
    processor = transformers.AutoProcessor.from_pretrained(path)
    return model, processor
