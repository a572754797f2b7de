"""What trains and how: the paper's stages as presets, freezing by parameter prefix, per-module
learning rates, AdamW with warmup + cosine, LoRA (peft), activation checkpointing and FSDP2.

Parameters fall in three parts, by name: `visual.merger.*` (merger), the rest of `visual.*` (vision)
and everything else (llm: the decoder, its embeddings and the LM head). `requires_grad` is set on the
parameters themselves, so nothing that a stage freezes can slip back in.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint


@dataclass(frozen=True)
class Stage:
    name: str
    vision: bool            # ViT trains
    merger: bool            # the 2x2 merger (the projector) trains
    llm: bool               # the decoder and LM head train
    lr: float               # base learning rate (llm and merger)
    vision_lr_scale: float  # vision lr = lr * this, unless --vision-lr is given
    max_len: int
    dpo: bool = False


STAGES = {
    # Pre-training phase 1: align the ViT (and merger) to a frozen LLM.
    "vision": Stage("vision", True, True, False, lr=2e-4, vision_lr_scale=1.0, max_len=8192),
    # Phase 2: everything, interleaved multimodal data.
    "multimodal": Stage("multimodal", True, True, True, lr=1e-5, vision_lr_scale=0.2, max_len=8192),
    # Phase 3: everything, long sequences (long video, documents).
    "long": Stage("long", True, True, True, lr=1e-5, vision_lr_scale=0.2, max_len=32768),
    # Post-training: ViT frozen.
    "sft": Stage("sft", False, True, True, lr=1e-5, vision_lr_scale=0.0, max_len=8192),
    "dpo": Stage("dpo", False, True, True, lr=1e-6, vision_lr_scale=0.0, max_len=8192, dpo=True),
}


def part(name: str) -> str:
    """Parameter name (ours, possibly with peft's wrappers inside) -> "vision" | "merger" | "llm"."""
    if "visual.merger." in name:
        return "merger"
    if name.startswith("visual.") or ".visual." in name:
        return "vision"
    return "llm"


def freeze(model, stage: Stage, lora: bool) -> dict[str, int]:
    """Set requires_grad per the stage; with LoRA the llm's base weights stay frozen and only its
    adapters train. Returns trainable parameter counts per part."""
    train = {"vision": stage.vision, "merger": stage.merger, "llm": stage.llm}
    counts = {"vision": 0, "merger": 0, "llm": 0}
    for name, p in model.named_parameters():
        k = part(name)
        on = train[k] and (not lora or k != "llm" or "lora_" in name)
        p.requires_grad_(on)
        counts[k] += p.numel() if on else 0
    if not any(counts.values()):
        raise ValueError(f"stage {stage.name!r} leaves nothing to train")
    return counts


def param_groups(model, lrs: dict[str, float], weight_decay: float) -> list[dict]:
    """AdamW groups: one per part and decay/no-decay (no decay on biases and norm scales, i.e. ndim < 2)."""
    groups: dict[tuple[str, bool], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((part(name), p.ndim >= 2), []).append(p)
    return [{"params": ps, "lr": lrs[k], "weight_decay": weight_decay if decay else 0.0, "part": k}
            for (k, decay), ps in sorted(groups.items())]


def lr_lambda(warmup: int, total: int, min_ratio: float = 0.0):
    """Linear warmup to 1 over `warmup` steps, then cosine down to `min_ratio` at `total`."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return f


def blocks(model):
    """The repeated blocks: the unit of activation checkpointing and of FSDP sharding."""
    return [*model.visual.blocks, *model.language_model.layers]


def checkpoint_activations(model) -> None:
    """Recompute each block's activations in backward instead of keeping them (non-reentrant, so
    frozen inputs and LoRA work). Patches the instances' forward: parameter names stay unchanged."""
    for block in blocks(model):
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)


LORA_TARGETS = r".*language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"


def add_lora(model, r: int, alpha: int, dropout: float):
    """LoRA adapters on every linear layer of the decoder (attention and MLP). Returns the PeftModel
    (for merge_and_unload and disable_adapter); `model` itself is modified in place."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                                            target_modules=LORA_TARGETS))


def shard(policy, mesh, mp_dtype: torch.dtype | None = None) -> None:
    """FSDP2 over a step.Policy: each ViT block and decoder layer is a unit, then the embeddings with the
    LM head (one unit, since they may be tied), then the root (patch embed, merger, final norm). The
    root is the Policy, whose forward is what training calls, so its hooks fire."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=mp_dtype, reduce_dtype=torch.float32) if mp_dtype else MixedPrecisionPolicy()
    model = policy.model
    for block in blocks(model):
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard([model.language_model.embed_tokens, model.lm_head], mesh=mesh, mp_policy=mp)
    fully_shard(policy, mesh=mesh, mp_policy=mp)
