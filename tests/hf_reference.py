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


def qwen2vl_tiny_config(ids: dict[str, int], vocab_size: int, *, tie_word_embeddings: bool = False,
                        mlp_ratio: float = 2.5):
    """The tiny config with the Qwen2-VL tower: LayerNorm blocks of width 64, MLP mlp_ratio x wider, no windows."""
    import dataclasses
    cfg = tiny_config(ids, vocab_size=vocab_size, tie_word_embeddings=tie_word_embeddings)
    vision = dataclasses.replace(cfg.vision, model_type="qwen2_vl", hidden_act="quick_gelu",
                                 intermediate_size=int(cfg.vision.hidden_size * mlp_ratio), fullatt_block_indexes=())
    return dataclasses.replace(cfg, vision=vision)


def build_hf_qwen2vl_checkpoint(out: Path, *, tie_word_embeddings: bool = False, seed: int = 0,
                                max_shard_size: str = "200KB") -> Path:
    """A random Qwen2VLForConditionalGeneration (model_type qwen2_vl) saved by transformers, with the
    Qwen2-VL processor class (no second_per_grid_ts: Qwen2-VL's positions ignore video timing)."""
    import json
    transformers = pytest.importorskip("transformers")
    ids, vocab = write_assets(out)
    pre = json.loads((out / "preprocessor_config.json").read_text())
    pre["processor_class"] = "Qwen2VLProcessor"
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
    cfg = qwen2vl_tiny_config(ids, vocab + 6, tie_word_embeddings=tie_word_embeddings)
    hf_cfg = transformers.Qwen2VLConfig(**cfg.to_hf_dict())
    torch.manual_seed(seed)
    model = transformers.Qwen2VLForConditionalGeneration(hf_cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or "ln_q" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(out, max_shard_size=max_shard_size, safe_serialization=True)
    return out


def load_hf_qwen2vl(path: Path):
    import transformers
    model = transformers.Qwen2VLForConditionalGeneration.from_pretrained(
        path, torch_dtype=torch.float32, attn_implementation="eager").eval()
    return model, transformers.AutoProcessor.from_pretrained(path)
