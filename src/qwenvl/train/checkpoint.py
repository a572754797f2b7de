"""Training checkpoints (resume) and the exported Hugging Face model.

A checkpoint is a directory `DIR/checkpoints/step-NNNNNN/`:
- model and optimizer state through torch.distributed.checkpoint (each rank writes its shards; the
  same code runs in one process);
- `rank-R.pt`: that rank's data position and RNG states; `trainer.pt`: step and scheduler.
It is written to `.tmp-step-NNNNNN` and renamed once complete, then `latest` is replaced, so a run
killed mid-write leaves the previous checkpoint intact.

The export is a directory transformers and `qwenvl.load` both read: config.json and safetensors
shards in the released key layout (model.save_model), plus the base model's tokenizer, processor,
chat template and generation config files.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                     set_state_dict)

from ..model.weights import save_model

# Files of a base checkpoint that travel with the trained weights unchanged.
ASSET_SUFFIXES = (".json", ".txt", ".jinja", ".model", ".tiktoken")
NOT_ASSETS = {"config.json", "model.safetensors.index.json"}


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def rng_state() -> dict:
    s = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def save(root: Path, step: int, model, optimizer, scheduler, data_state: dict, keep: int = 2) -> Path:
    root = Path(root)
    name = f"step-{step:06d}"
    tmp, final = root / f".tmp-{name}", root / name
    if _rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp), no_dist=not dist.is_initialized())
    torch.save({"data": data_state, "rng": rng_state()}, tmp / f"rank-{_rank()}.pt")
    if _rank() == 0:
        torch.save({"step": step, "scheduler": scheduler.state_dict()}, tmp / "trainer.pt")
    _barrier()
    if _rank() == 0:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        pointer = root / "latest.tmp"
        pointer.write_text(name)
        os.replace(pointer, root / "latest")
        for old in sorted(root.glob("step-*"))[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def latest(root: Path) -> Path | None:
    pointer = Path(root) / "latest"
    if not pointer.exists():
        return None
    path = Path(root) / pointer.read_text().strip()
    return path if path.exists() else None


def load(path: Path, model, optimizer, scheduler) -> tuple[int, dict]:
    """Restore model, optimizer, scheduler and RNG in place; returns (step, this rank's data state)."""
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=str(path), no_dist=not dist.is_initialized())
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    trainer = torch.load(path / "trainer.pt", weights_only=False)
    scheduler.load_state_dict(trainer["scheduler"])
    mine = path / f"rank-{_rank()}.pt"
    if not mine.exists():
        raise ValueError(f"{path} was written by fewer processes: resume with the same number of processes")
    rank_state = torch.load(mine, weights_only=False)
    set_rng_state(rank_state["rng"])
    return trainer["step"], rank_state["data"]


def export(model, base: Path, out: Path, dtype: torch.dtype | None = None) -> Path | None:
    """Write the trained model as a Hugging Face directory `out` (rank 0 writes; all ranks must call
    this under FSDP, since gathering the full weights is collective). `model` is a plain QwenVL (LoRA
    merged beforehand), possibly sharded. `dtype`: of the saved tensors (default: the base's)."""
    from ..model.qwen25vl import QwenVL

    base, out = Path(base), Path(out)
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if _rank() != 0:
        _barrier()
        return None
    if dtype is None:
        name = json.loads((base / "config.json").read_text()).get("torch_dtype", "float32")
        dtype = getattr(torch, name) if isinstance(name, str) and hasattr(torch, name) else torch.float32
    with torch.device("meta"):
        plain = QwenVL(model.config)
    plain.load_state_dict({k: v.to(dtype) for k, v in full.items()}, strict=False, assign=True)
    if model.config.text.tie_word_embeddings:
        plain.lm_head.weight = plain.language_model.embed_tokens.weight
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(plain, tmp)
    for f in base.iterdir():
        if f.is_file() and f.suffix in ASSET_SUFFIXES and f.name not in NOT_ASSETS:
            shutil.copy2(f, tmp / f.name)
    if not (tmp / "generation_config.json").exists():
        cfg = model.config
        eos = list(cfg.eos_token_id) if isinstance(cfg.eos_token_id, tuple) else cfg.eos_token_id
        (tmp / "generation_config.json").write_text(json.dumps(
            {"bos_token_id": cfg.bos_token_id, "pad_token_id": cfg.pad_token_id, "eos_token_id": eos}, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    _barrier()
    return out
