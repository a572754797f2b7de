"""Loading Hugging Face checkpoints: config.json plus safetensors (one file or shards with an index).

Both key layouts are read: `model.layers.*` / `visual.*` / `lm_head.*` (before transformers 4.52) and
`model.language_model.*` / `model.visual.*` / `lm_head.*` (after). The model is built on the meta
device and each tensor is assigned as it is read, so peak memory stays close to the weights' size.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config import QwenVLConfig
from .fuse import unfuse_state_dict
from .mapped import MappedSafetensors
from .qwen25vl import QwenVL

# checkpoint prefix -> our module prefix; the first match wins, so the longer (newer) prefixes come first
PREFIXES = (
    ("model.language_model.", "language_model."),
    ("model.visual.", "visual."),
    ("model.", "language_model."),
    ("visual.", "visual."),
    ("lm_head.", "lm_head."),
)


def our_key(key: str) -> str | None:
    for theirs, ours in PREFIXES:
        if key.startswith(theirs):
            return ours + key[len(theirs):]
    return None


def their_key(key: str) -> str:
    """Our parameter name -> the transformers 4.x name (the layout the released checkpoints use)."""
    if key.startswith("language_model."):
        return "model." + key[len("language_model."):]
    return key


def weight_files(path: Path) -> dict[str, Path]:
    """Map every tensor name to the file holding it, checking the shards are all there."""
    index = path / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        files = {name: path / f for name, f in weight_map.items()}
        missing = sorted({f.name for f in files.values() if not f.exists()})
        if missing:
            raise FileNotFoundError(f"{path}: shards listed in model.safetensors.index.json are missing: "
                                    + ", ".join(missing))
        return files
    single = sorted(path.glob("*.safetensors"))
    if not single:
        raise FileNotFoundError(f"{path} has no *.safetensors weights (nor model.safetensors.index.json)")
    from safetensors import safe_open
    files = {}
    for f in single:
        with safe_open(f, framework="pt") as fh:
            for name in fh.keys():
                files[name] = f
    return files


def load_model(path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
               config: QwenVLConfig | None = None) -> QwenVL:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a directory (expected a Hugging Face checkpoint folder)")
    config = config or QwenVLConfig.from_file(path)
    from ..engine.awq import load_awq_model, read_quantization
    if (quant := read_quantization(path)) is not None:  # AWQ: the 4-bit weights stay 4-bit (engine/awq.py)
        return load_awq_model(path, config, dtype, device, quant)
    files = weight_files(path)

    with torch.device("meta"):
        model = QwenVL(config)
    params = dict(model.named_parameters())
    tied = config.text.tie_word_embeddings
    expected = {k for k in params if not (tied and k == "lm_head.weight")}

    state, unexpected = {}, []
    by_file: dict[Path, list[str]] = {}
    for name, f in files.items():
        by_file.setdefault(f, []).append(name)
    for f, names in by_file.items():
        try:
            handle = MappedSafetensors(f)
        except Exception as e:  # a truncated or foreign file
            raise ValueError(f"{f.name} is not a readable safetensors file: {e}") from None
        with handle:
            for name in names:
                key = our_key(name)
                if key is None or key not in params:
                    unexpected.append(name)
                    continue
                if tied and key == "lm_head.weight":
                    continue
                try:
                    t = handle.get_tensor(name)
                except Exception as e:
                    raise ValueError(f"{f.name}: tensor {name} cannot be read ({e}); the shard may be partial") from None
                if key == "visual.patch_embed.proj.weight" and t.ndim == 5:
                    t = t.reshape(t.shape[0], -1)  # Conv3d kernel == stride: a Linear over the patch
                want = params[key].shape
                if tuple(t.shape) != tuple(want):
                    raise ValueError(f"{name}: shape {tuple(t.shape)} does not match the config's {tuple(want)}")
                # float16 overflows in the released vision tower (its last blocks exceed 65504): keep it in bf16
                tdtype = torch.bfloat16 if dtype == torch.float16 and key.startswith("visual.") else dtype
                state[key] = t.to(device=device, dtype=tdtype)
    if unexpected:
        raise ValueError(f"{path}: unexpected tensors not in a Qwen2.5-VL model: " + ", ".join(sorted(unexpected)[:10])
                         + (" ..." if len(unexpected) > 10 else ""))
    missing = sorted(expected - state.keys())
    if missing:
        raise ValueError(f"{path}: missing tensors: " + ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""))

    model.load_state_dict(state, strict=False, assign=True)
    if tied:
        model.lm_head.weight = model.language_model.embed_tokens.weight
    init_buffers(model, device)
    return model.eval()


def init_buffers(model: QwenVL, device) -> None:
    """Non-persistent buffers (RoPE inverse frequencies) are not in checkpoints: compute them for real."""
    cfg = model.config
    rot = cfg.vision.head_dim // 2
    model.visual.inv_freq = 1.0 / (10000 ** (torch.arange(0, rot, 2, dtype=torch.float, device=device) / rot))
    D = cfg.text.head_dim
    model.language_model.inv_freq = 1.0 / (
        cfg.text.rope_theta ** (torch.arange(0, D, 2, dtype=torch.float, device=device) / D))


def random_model(config: QwenVLConfig, dtype: torch.dtype = torch.float32, seed: int = 0,
                 device: str | torch.device = "cpu") -> QwenVL:
    """A model with random weights (benchmarks, tests): small normal init like the reference's 0.02,
    norms at one, biases at zero. Built on the meta device and allocated once in `dtype`, so a 3B model in
    bfloat16 never holds a float32 copy (peak memory = the weights' bytes)."""
    torch.manual_seed(seed)
    with torch.device("meta"):
        model = QwenVL(config)
    model = model.to(dtype).to_empty(device=device)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.normal_(0, 0.02)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.fill_(1.0)
    if config.text.tie_word_embeddings:
        model.lm_head.weight = model.language_model.embed_tokens.weight
    init_buffers(model, device)
    return model.eval()


def save_model(model: QwenVL, path: str | Path, max_shard_bytes: int = 2 * 1024**3) -> None:
    """Write config.json and safetensors shards (with an index) in the transformers 4.x key layout."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {}
    for key, t in unfuse_state_dict(model, model.state_dict()).items():
        if model.config.text.tie_word_embeddings and key == "lm_head.weight":
            continue
        if key == "visual.patch_embed.proj.weight":
            v = model.config.vision
            t = t.reshape(t.shape[0], v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)
        state[their_key(key)] = t.detach().contiguous()
    shards, current, size = [], {}, 0
    for k, t in state.items():
        n = t.numel() * t.element_size()
        if current and size + n > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[k] = t
        size += n
    shards.append(current)
    weight_map = {}
    for i, shard in enumerate(shards):
        name = "model.safetensors" if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        tmp = path / (name + ".tmp")
        save_file(shard, str(tmp), metadata={"format": "pt"})
        tmp.replace(path / name)
        weight_map.update({k: name for k in shard})
    if len(shards) > 1:
        total = sum(t.numel() * t.element_size() for t in state.values())
        (path / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    cfg = model.config.to_hf_dict()
    cfg["torch_dtype"] = str(next(iter(state.values())).dtype).removeprefix("torch.")
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
