"""peft LoRA adapters in the transformers layout: read one and fold it into our weights at load.

An adapter directory holds `adapter_config.json` (peft's LoraConfig) and `adapter_model.safetensors`
with keys `base_model.model.<transformers module>.lora_A.weight` / `.lora_B.weight` and, for the
modules saved whole (`modules_to_save`), `base_model.model.<transformers module>.<param>`. Module
names are transformers' (4.51: `model.layers.N...`, `visual...`; 4.52+: `model.language_model.layers.N`,
`model.visual...`), so the same directory loads in `PeftModel.from_pretrained` on the transformers
model and here. Applying it is W += (alpha / r) * B @ A for each adapted Linear, done in float32
before the weights are fused for inference, so a merged export and base + adapter agree.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from .weights import our_key

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."


def read_adapter(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapter_config, tensors) of a peft LoRA directory, checking it is a kind we can apply."""
    from safetensors.torch import load_file

    path = Path(path)
    cfg_file, weights = path / ADAPTER_CONFIG, path / ADAPTER_WEIGHTS
    if not cfg_file.is_file():
        raise ValueError(f"{path} is not a peft adapter: no {ADAPTER_CONFIG}")
    if not weights.is_file():
        if (path / "adapter_model.bin").is_file():
            raise ValueError(f"{path}: adapter_model.bin (pickle) is not read; save the adapter with safetensors")
        raise ValueError(f"{path} is not a peft adapter: no {ADAPTER_WEIGHTS}")
    cfg = json.loads(cfg_file.read_text())
    kind = cfg.get("peft_type", "LORA")
    if kind != "LORA":
        raise ValueError(f"{path}: peft_type {kind!r} is not supported (only LORA)")
    for key, ok in (("use_dora", False), ("fan_in_fan_out", False)):
        if cfg.get(key, ok) != ok:
            raise ValueError(f"{path}: {key}={cfg[key]!r} is not supported")
    if cfg.get("bias", "none") != "none":
        raise ValueError(f"{path}: bias={cfg['bias']!r} is not supported (only 'none')")
    for key in ("rank_pattern", "alpha_pattern"):
        if cfg.get(key):
            raise ValueError(f"{path}: a per-module {key} is not supported")
    return cfg, load_file(str(weights))


def _our_module(key: str, path: Path) -> str:
    name = key[len(PREFIX):] if key.startswith(PREFIX) else key
    ours = our_key(name)
    if ours is None:
        raise ValueError(f"{path}: adapter key {key!r} names no module of a Qwen2.5-VL model")
    return ours


@torch.no_grad()
def apply_adapter(model, path: str | Path) -> int:
    """Fold the LoRA adapter at `path` into `model` (a plain, unfused QwenVL) in place and copy its
    whole saved modules. Returns the number of weights changed."""
    path = Path(path)
    cfg, tensors = read_adapter(path)
    r, alpha = cfg["r"], cfg.get("lora_alpha", cfg["r"])
    scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    params = dict(model.named_parameters())
    changed = 0
    for key, a in tensors.items():
        if ".lora_B." in key or ".lora_embedding_B" in key:
            continue
        if ".lora_A." in key:
            module = key.split(".lora_A.")[0]
            b = tensors.get(key.replace(".lora_A.", ".lora_B."))
            if b is None:
                raise ValueError(f"{path}: {key} has no matching lora_B")
            name = _our_module(module, path) + ".weight"
            if name not in params:
                raise ValueError(f"{path}: adapter module {module!r} is not a Linear of this model ({name})")
            w = params[name]
            delta = b.float() @ a.float() * scale
            if delta.shape != w.shape:
                raise ValueError(f"{path}: {module} delta is {tuple(delta.shape)}, the weight {tuple(w.shape)}")
            w.copy_((w.float() + delta.to(w.device)).to(w.dtype))
        elif "lora_" in key:
            raise ValueError(f"{path}: {key}: LoRA on embeddings or convolutions is not supported")
        else:   # a module saved whole (modules_to_save)
            name = _our_module(key, path)
            if name not in params:
                raise ValueError(f"{path}: adapter tensor {key!r} matches no parameter of this model ({name})")
            w = params[name]
            w.copy_(a.reshape(w.shape).to(w.device, w.dtype))
        changed += 1
    if not changed:
        raise ValueError(f"{path}: the adapter holds no weights")
    return changed
