"""The `--lora` run's peft adapter, in the transformers layout (see model/lora.py for the format).

Our modules are named `language_model.layers.N...`; the adapter must name transformers' modules
(`model.layers.N...` in 4.51, `model.language_model.layers.N...` from 4.52), so the saved
target_modules pattern accepts both and the tensor keys use the 4.51 names (which peft on 4.52+
also finds, as its checkpoint conversion maps them). Parts that trained in full beside the
adapters (the merger in sft, the ViT in the pre-training stages) go in as peft `modules_to_save`,
so base + adapter gives the same model as the merged export.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from ..model.lora import ADAPTER_WEIGHTS, PREFIX
from ..model.weights import their_key

# transformers' decoder Linear layers, 4.51 (model.layers) and 4.52+ (model.language_model.layers) names
HF_TARGETS = r"model(\.language_model)?\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"


def saved_whole(model) -> list[str]:
    """The transformers module names to save whole: what trains beside the adapters."""
    trained = [n for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n]
    if any(n.startswith("visual.") and not n.startswith("visual.merger.") for n in trained):
        return ["visual"]
    if any(n.startswith("visual.merger.") for n in trained):
        return ["visual.merger"]
    others = sorted({n for n in trained if not n.startswith("visual.")})
    if others:
        raise ValueError(f"LoRA run also trains {others[:3]}...: no adapter layout for that")
    return []


def _hf_name(key: str) -> str:
    """Our state-dict key (peft's wrappers inside, adapter name `default`) -> the saved adapter key."""
    key = key.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B.")
    return PREFIX + their_key(key.replace(".base_layer.", "."))


def export_adapter(model, peft_config, base: Path, out: Path) -> Path | None:
    """Write `out/adapter_config.json` + `out/adapter_model.safetensors` from `model` (ours, with
    peft's LoRA layers in place, possibly FSDP-sharded: every rank must call this). Rank 0 writes."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    whole = saved_whole(model)
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.is_initialized() and dist.get_rank() != 0:
        dist.barrier()
        return None
    tensors = {}
    vision = model.config.vision
    for key, t in full.items():
        plain = key.replace(".base_layer.", ".")
        if "lora_" in key:
            if ".default." not in key:
                raise ValueError(f"unexpected LoRA parameter {key!r} (only the adapter 'default' is saved)")
        elif not any(plain.startswith(m + ".") for m in whole):
            continue
        if plain == "visual.patch_embed.proj.weight":   # transformers keeps the Conv3d shape
            t = t.reshape(t.shape[0], vision.in_channels, vision.temporal_patch_size, vision.patch_size,
                          vision.patch_size)
        tensors[_hf_name(key)] = t.detach().to(torch.float32).contiguous()
    if not any(".lora_A." in k for k in tensors):
        raise ValueError("the model has no LoRA weights to export")
    cfg = LoraConfig(r=peft_config.r, lora_alpha=peft_config.lora_alpha, lora_dropout=peft_config.lora_dropout,
                     target_modules=HF_TARGETS, modules_to_save=whole or None,
                     use_rslora=peft_config.use_rslora, base_model_name_or_path=str(base), inference_mode=True)
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    cfg.save_pretrained(str(tmp))
    save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    if dist.is_initialized():
        dist.barrier()
    return out
