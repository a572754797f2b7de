"""Loading Hugging Face checkpoints: config.json plus safetensors (one file or shards with an index).

Both key layouts are read: `model.layers.*` / `visual.*` / `lm_head.*` (before transformers 4.52) and
`model.language_model.*` / `model.visual.*` / `lm_head.*` (after). The model is built on the meta
device and each tensor is assigned as it is read, so peak memory stays close to the weights' size.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..config import QwenVLConfig
from ..errors import CheckpointError
from .layers import rope_inv_freq
from .mapped import MappedSafetensors, read_header
from .qwen25vl import QwenVL
from .vision import vision_inv_freq

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
        try:
            weight_map = json.loads(index.read_bytes()).get("weight_map")
        except (ValueError, AttributeError, RecursionError) as e:
            raise CheckpointError(f"{index}: not a valid index ({type(e).__name__}: {e})") from None
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index}: no weight_map (an object of tensor name -> shard file)")
        for name, f in weight_map.items():
            # a shard is a file beside the index: no path may lead out of the checkpoint folder
            if not isinstance(f, str) or Path(f).name != f or f in ("", ".", ".."):
                raise CheckpointError(f"{index}: tensor {name!r} maps to {f!r}, not a shard file name")
        files = {name: path / f for name, f in weight_map.items()}
        missing = sorted({f.name for f in files.values() if not f.exists()})
        if missing:
            raise FileNotFoundError(f"{path}: shards listed in model.safetensors.index.json are missing: "
                                    + ", ".join(missing))
        return files
    single = sorted(path.glob("*.safetensors"))
    if not single:
        raise FileNotFoundError(f"{path} has no *.safetensors weights (nor model.safetensors.index.json)")
    return {name: f for f in single for name in read_header(f)[0]}


def check_weights_default() -> bool:
    """Weights are checked for NaN/inf on load unless QWENVL_CHECK_WEIGHTS=0."""
    return os.environ.get("QWENVL_CHECK_WEIGHTS", "1").strip().lower() not in ("0", "false", "no", "off")


def all_finite(t: torch.Tensor, chunk: int = 1 << 24) -> bool:
    """isfinite over `t` in chunks, so the check never holds more than a 16M-element mask."""
    flat = t.reshape(-1)
    return all(bool(torch.isfinite(flat[i:i + chunk]).all()) for i in range(0, flat.numel(), chunk))


def is_quantized(path: Path) -> bool:
    try:
        return bool(json.loads((path / "config.json").read_text()).get("quantization_config"))
    except (OSError, ValueError, AttributeError):
        return False  # QwenVLConfig.from_file reports an unreadable config


def load_model(path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
               config: QwenVLConfig | None = None, check_weights: bool | None = None) -> QwenVL:
    """Every fault of the checkpoint is a CheckpointError (a ValueError) naming the file and the tensor:
    a damaged or truncated file, an impossible config, a missing, extra or misshapen tensor, weights
    that are not floating point, and (unless check_weights=False or QWENVL_CHECK_WEIGHTS=0) weights
    holding NaN or inf once in `dtype` (a pass over each tensor as it is loaded)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a directory (expected a Hugging Face checkpoint folder)")
    check = check_weights_default() if check_weights is None else check_weights
    config = config or QwenVLConfig.from_file(path)
    if is_quantized(path):
        raise CheckpointError(f"{path}: a quantized checkpoint (config.json quantization_config); load it with "
                              "qwenvl.load or qwenvl.fast.load_checkpoint, which keep its 4-bit weights")
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
        handle = MappedSafetensors(f)  # CheckpointError for an empty, truncated or foreign file
        with handle:
            for name in names:
                key = our_key(name)
                if key is None or key not in params:
                    unexpected.append(name)
                    continue
                if tied and key == "lm_head.weight":
                    continue
                if name not in handle.header:
                    raise CheckpointError(f"{f}: tensor {name} (listed in model.safetensors.index.json) is not in "
                                          "the file; the shard may be partial")
                t = handle.get_tensor(name)
                if not t.dtype.is_floating_point:
                    raise CheckpointError(f"{f}: tensor {name} has dtype {str(t.dtype).removeprefix('torch.')}, "
                                          "expected floating-point weights")
                want = params[key].shape
                if key == "visual.patch_embed.proj.weight" and t.ndim == 5 and t.numel() == want.numel():
                    t = t.reshape(t.shape[0], -1)  # Conv3d kernel == stride: a Linear over the patch
                if tuple(t.shape) != tuple(want):
                    raise CheckpointError(f"{f}: {name}: shape {tuple(t.shape)} does not match the config's "
                                          f"{tuple(want)}")
                # float16 overflows in the released vision tower (its last blocks exceed 65504): keep it in bf16
                tdtype = torch.bfloat16 if dtype == torch.float16 and key.startswith("visual.") else dtype
                state[key] = t.to(device=device, dtype=tdtype)
                if check and not all_finite(state[key]):
                    cause = "holds NaN or infinite values" if not all_finite(t) else \
                        f"overflows to infinity in {str(tdtype).removeprefix('torch.')}"
                    raise CheckpointError(f"{f}: tensor {name} {cause} (check_weights=False or "
                                          "QWENVL_CHECK_WEIGHTS=0 skips this check)")
    if unexpected:
        raise CheckpointError(f"{path}: unexpected tensors not in a Qwen2.5-VL model: "
                              + ", ".join(sorted(unexpected)[:10]) + (" ..." if len(unexpected) > 10 else ""))
    missing = sorted(expected - state.keys())
    if missing:
        raise CheckpointError(f"{path}: missing tensors: " + ", ".join(missing[:10])
                              + (" ..." if len(missing) > 10 else ""))

    model.load_state_dict(state, strict=False, assign=True)
    if tied:
        model.lm_head.weight = model.language_model.embed_tokens.weight
    init_buffers(model, device)
    return model.eval()


def init_buffers(model: QwenVL, device) -> None:
    """Non-persistent buffers (RoPE inverse frequencies) are not in checkpoints: compute them for real."""
    model.visual.inv_freq = vision_inv_freq(model.config.vision, device)
    model.language_model.inv_freq = rope_inv_freq(model.config.text.head_dim, model.config.text.rope_theta, device)


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
    for key, t in model.state_dict().items():
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
