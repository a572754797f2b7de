"""Model configuration: frozen dataclasses with the Hugging Face field names.

`QwenVLConfig.from_hf_dict` reads a checkpoint's config.json as each transformers release writes it:
- 4.51: text fields at the top level, `rope_scaling.mrope_section`, `vision_config` nested;
- 4.52-4.57: the same top level plus a copy of the text fields under `text_config`; up to 4.56 that
  copy holds `"image_token_id": null, "video_token_id": null` beside the real top-level ids;
- 5.x: text fields only under `text_config`, rope (theta included) under `rope_parameters`.
Each field is taken from where the releases put it, and a null never hides a value given elsewhere.
The network sizes are required; the other defaults are those of the transformers 4.51.3 config
classes (note `tokens_per_second=4` there, while the releases set 2). Impossible values (a size of
0, a string for a number, heads that do not divide the width) are refused with the field's name.

Qwen2-VL checkpoints (`model_type` "qwen2_vl") load into the same classes: their vision_config names the
tower width `embed_dim`, the merger's output `hidden_size` and the MLP width `mlp_ratio` (a multiple of
embed_dim); `VisionConfig.model_type` then selects the Qwen2-VL tower (model/vision_qwen2.py) and
frame-index temporal positions (model/rope.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CheckpointError

ACTIVATIONS = ("silu", "gelu", "gelu_pytorch_tanh", "quick_gelu")  # model/layers.py implements these


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _need(ok: bool, name: str, what: str, value) -> None:
    if not ok:
        raise ValueError(f"{name} must be {what}, got {value!r}")


def _positive_ints(obj, names: tuple[str, ...]) -> None:
    for n in names:
        v = getattr(obj, n)
        _need(_is_int(v) and 0 < v < 2**31, n, "a positive integer", v)  # (below 2^31: a tensor size)


def _positive_floats(obj, names: tuple[str, ...]) -> None:
    for n in names:
        v = getattr(obj, n)
        _need(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0, n,
              "a positive finite number", v)
        object.__setattr__(obj, n, float(v))  # a JSON integer (10**20) would overflow torch's scalars


@dataclass(frozen=True)
class VisionConfig:
    depth: int = 32
    hidden_size: int = 3584
    hidden_act: str = "silu"
    intermediate_size: int = 3420
    num_heads: int = 16
    in_channels: int = 3
    patch_size: int = 14
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2
    tokens_per_second: float = 4
    window_size: int = 112
    out_hidden_size: int = 3584
    fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
    rms_norm_eps: float = 1e-6  # the released tower hard-codes 1e-6 (LayerNorm eps in Qwen2-VL's)
    # the family: "qwen2_5_vl" (RMSNorm, SwiGLU, window attention) or "qwen2_vl" (LayerNorm, QuickGELU fc1/fc2,
    # every block within a frame, LayerNorm merger; time positions are frame indexes)
    model_type: str = "qwen2_5_vl"

    def __post_init__(self):
        _positive_ints(self, ("depth", "hidden_size", "intermediate_size", "num_heads", "in_channels", "patch_size",
                              "spatial_merge_size", "temporal_patch_size", "window_size", "out_hidden_size"))
        _positive_floats(self, ("tokens_per_second", "rms_norm_eps"))
        _need(self.hidden_act in ACTIVATIONS, "hidden_act", f"one of {', '.join(ACTIVATIONS)}", self.hidden_act)
        # 2D RoPE splits each head in four (h and w halves of cos/sin): the head width must divide by 4
        _need(self.hidden_size % self.num_heads == 0 and self.head_dim % 4 == 0, "hidden_size",
              f"num_heads ({self.num_heads}) x a multiple of 4", self.hidden_size)
        _need(self.window_size >= self.patch_size * self.spatial_merge_size, "window_size",
              f"at least patch_size x spatial_merge_size = {self.patch_size * self.spatial_merge_size}",
              self.window_size)
        idx = self.fullatt_block_indexes
        _need(isinstance(idx, tuple) and all(_is_int(i) and 0 <= i < self.depth for i in idx),
              "fullatt_block_indexes", f"a list of block indexes below depth ({self.depth})", idx)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def merge_unit(self) -> int:
        return self.spatial_merge_size**2

    @property
    def patch_dim(self) -> int:
        """Values in one flattened patch (a row of pixel_values): C * T * P * P."""
        return self.in_channels * self.temporal_patch_size * self.patch_size**2


@dataclass(frozen=True)
class TextConfig:
    vocab_size: int = 152064
    hidden_size: int = 8192
    intermediate_size: int = 29568
    num_hidden_layers: int = 80
    num_attention_heads: int = 64
    num_key_value_heads: int = 8
    hidden_act: str = "silu"
    max_position_embeddings: int = 32768
    rms_norm_eps: float = 1e-5
    rope_theta: float = 1_000_000.0
    mrope_section: tuple[int, ...] = (16, 24, 24)
    tie_word_embeddings: bool = False
    head_dim: int | None = None

    def __post_init__(self):
        _positive_ints(self, ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                              "num_attention_heads", "num_key_value_heads", "max_position_embeddings"))
        _positive_floats(self, ("rms_norm_eps", "rope_theta"))
        _need(self.hidden_act in ACTIVATIONS, "hidden_act", f"one of {', '.join(ACTIVATIONS)}", self.hidden_act)
        _need(isinstance(self.tie_word_embeddings, bool), "tie_word_embeddings", "true or false",
              self.tie_word_embeddings)
        _need(self.num_attention_heads % self.num_key_value_heads == 0, "num_key_value_heads",
              f"a divisor of num_attention_heads ({self.num_attention_heads})", self.num_key_value_heads)
        if self.head_dim is None:
            _need(self.hidden_size % self.num_attention_heads == 0, "hidden_size",
                  f"a multiple of num_attention_heads ({self.num_attention_heads})", self.hidden_size)
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        _need(_is_int(self.head_dim) and self.head_dim > 0 and self.head_dim % 2 == 0, "head_dim",
              "a positive even integer", self.head_dim)
        sec = self.mrope_section
        _need(isinstance(sec, tuple) and len(sec) == 3 and all(_is_int(x) and x >= 0 for x in sec),
              "mrope_section", "three non-negative integers (t, h, w)", sec)
        if 2 * sum(self.mrope_section) != self.head_dim:
            raise ValueError(
                f"mrope_section {list(self.mrope_section)} must sum to head_dim/2 = {self.head_dim // 2}"
            )


@dataclass(frozen=True)
class QwenVLConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    bos_token_id: int | None = 151643
    eos_token_id: int | tuple[int, ...] | None = 151645
    pad_token_id: int | None = None
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    vision_token_id: int = 151654
    image_token_id: int = 151655
    video_token_id: int = 151656

    def __post_init__(self):
        vocab = self.text.vocab_size
        for n in ("vision_start_token_id", "vision_end_token_id", "vision_token_id", "image_token_id",
                  "video_token_id", "bos_token_id", "pad_token_id", "eos_token_id"):
            v = getattr(self, n)
            if v is None and n in ("bos_token_id", "pad_token_id", "eos_token_id"):
                continue
            if n.startswith(("bos", "pad", "eos")):  # stop/pad ids only need to be ids: one out of range never matches
                ok = all(_is_int(x) and x >= 0 for x in (v if isinstance(v, tuple) and n == "eos_token_id" else (v,)))
                _need(ok, n, "a token id (or a list of them for eos_token_id)", v)
            else:  # the vision ids index the embedding table
                _need(_is_int(v) and 0 <= v < vocab, n, f"a token id below vocab_size ({vocab})", v)
        _need(self.vision.out_hidden_size == self.text.hidden_size, "vision_config.out_hidden_size",
              f"the text hidden_size ({self.text.hidden_size}), which the merger projects into",
              self.vision.out_hidden_size)

    @property
    def model_type(self) -> str:
        return self.vision.model_type

    # ---------------------------------------------------------------- reading and writing

    @classmethod
    def from_hf_dict(cls, d: dict) -> "QwenVLConfig":
        """Raises CheckpointError naming the field for a missing size or an impossible value."""
        if not isinstance(d, dict):
            raise CheckpointError(f"the config must be a JSON object, got {type(d).__name__}")
        model_type = d.get("model_type")
        if model_type not in (None, "qwen2_5_vl", "qwen2_vl"):
            raise CheckpointError(f"model_type is {model_type!r}, expected 'qwen2_5_vl' or 'qwen2_vl' "
                                  "(a Qwen2.5-VL or Qwen2-VL checkpoint)")
        for k in ("text_config", "vision_config"):
            if d.get(k) is not None and not isinstance(d[k], dict):
                raise CheckpointError(f"{k} must be a JSON object, got {type(d[k]).__name__}")
        top, nested = d, d.get("text_config") or {}

        def pick(key, *sources):
            """The first non-null value of `key` in `sources` (a null means "not set here")."""
            for src in sources:
                if src.get(key) is not None:
                    return src[key]
            return None

        # vision: only ever nested
        v = {k: val for k, val in (d.get("vision_config") or {}).items() if val is not None}
        if "in_chans" in v and "in_channels" not in v:
            v["in_channels"] = v["in_chans"]
        if model_type == "qwen2_vl":
            _require(v, ("depth", "embed_dim", "hidden_size", "num_heads"), "vision_config.")
            v = _qwen2_vl_vision(v)
        else:
            _require(v, ("depth", "hidden_size", "intermediate_size", "num_heads", "out_hidden_size"), "vision_config.")
            v["model_type"] = "qwen2_5_vl"
        vision = _build(VisionConfig, v, "vision_config.")

        # text: nested from 4.52 on (and only there in 5.x), top level before; the nested copy wins
        names = {f.name for f in dataclasses.fields(TextConfig)}
        t = {k: pick(k, nested, top) for k in names}
        rope = pick("rope_parameters", nested, top) or pick("rope_scaling", nested, top) or {}
        if not isinstance(rope, dict):
            raise CheckpointError(f"rope_scaling / rope_parameters must be a JSON object, got {rope!r}")
        if "full_attention" in rope and isinstance(rope["full_attention"], dict):  # 5.x per-layer-type form
            rope = rope["full_attention"]
        if rope.get("mrope_section") is not None:
            t["mrope_section"] = rope["mrope_section"]
        if t["rope_theta"] is None:
            t["rope_theta"] = rope.get("rope_theta")
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", "mrope"):
            raise CheckpointError(f"rope type {rope_type!r} is not supported (only default MRoPE)")
        _require(t, ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads"), "")
        text = _build(TextConfig, t, "")

        # token ids: top level in every release (4.52-4.56 write nulls for two of them in text_config)
        ids = {}
        for k in ("vision_start_token_id", "vision_end_token_id", "vision_token_id", "image_token_id",
                  "video_token_id"):
            if (val := pick(k, top, nested)) is not None:
                ids[k] = val
        for k in ("bos_token_id", "eos_token_id", "pad_token_id"):  # 5.x: in text_config only
            if any(k in src for src in (top, nested)):
                ids[k] = pick(k, nested, top)
        if isinstance(ids.get("eos_token_id"), list):
            ids["eos_token_id"] = tuple(ids["eos_token_id"])
        try:
            return cls(vision=vision, text=text, **ids)
        except (ValueError, TypeError) as e:
            raise CheckpointError(str(e)) from None

    @classmethod
    def from_file(cls, path: str | Path) -> "QwenVLConfig":
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.exists():
            raise FileNotFoundError(f"{path.parent} is not a Qwen2.5-VL checkpoint: no config.json in it")
        try:
            d = json.loads(path.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise CheckpointError(f"{path} is not valid JSON: {e}") from None
        try:
            return cls.from_hf_dict(d)
        except CheckpointError as e:
            raise CheckpointError(f"{path}: {e}") from None

    def to_hf_dict(self) -> dict:
        """config.json in the transformers 4.x layout (the one the released checkpoints use)."""
        text = dataclasses.asdict(self.text)
        mrope = list(text.pop("mrope_section"))
        text.pop("head_dim")
        vision = dataclasses.asdict(self.vision)
        vision.pop("rms_norm_eps")
        vision["fullatt_block_indexes"] = list(vision["fullatt_block_indexes"])
        vision["in_chans"] = vision["in_channels"]
        arch = "Qwen2_5_VLForConditionalGeneration"
        if self.model_type == "qwen2_vl":
            v = self.vision
            vision = {"depth": v.depth, "embed_dim": v.hidden_size, "hidden_size": v.out_hidden_size,
                      "hidden_act": v.hidden_act, "mlp_ratio": v.intermediate_size / v.hidden_size,
                      "num_heads": v.num_heads, "in_channels": v.in_channels, "in_chans": v.in_channels,
                      "patch_size": v.patch_size, "spatial_merge_size": v.spatial_merge_size,
                      "temporal_patch_size": v.temporal_patch_size, "model_type": "qwen2_vl"}
            arch = "Qwen2VLForConditionalGeneration"
        eos = self.eos_token_id
        return {
            "architectures": [arch],
            "model_type": self.model_type,
            **text,
            "rope_scaling": {"type": "mrope", "mrope_section": mrope},
            "vision_config": vision,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(eos) if isinstance(eos, tuple) else eos,
            "pad_token_id": self.pad_token_id,
            "vision_start_token_id": self.vision_start_token_id,
            "vision_end_token_id": self.vision_end_token_id,
            "vision_token_id": self.vision_token_id,
            "image_token_id": self.image_token_id,
            "video_token_id": self.video_token_id,
            "torch_dtype": "bfloat16",
            "use_sliding_window": False,
        }


def _require(d: dict, names: tuple[str, ...], prefix: str) -> None:
    missing = [prefix + n for n in names if d.get(n) is None]
    if missing:
        raise CheckpointError(f"missing required field(s) {', '.join(missing)} (the network's sizes are not guessed)")


def _qwen2_vl_vision(v: dict) -> dict:
    """A Qwen2-VL vision_config in our field names: `embed_dim` is the tower width, `hidden_size` the merger's
    output (the decoder width), the MLP is `mlp_ratio` x embed_dim wide. Defaults: Qwen2VLVisionConfig's."""
    embed = v.get("embed_dim", 1280)
    mlp_ratio = v.get("mlp_ratio", 4)
    out = {k: v[k] for k in ("depth", "num_heads", "in_channels", "patch_size", "spatial_merge_size",
                             "temporal_patch_size") if k in v}
    return {**out, "hidden_size": embed, "out_hidden_size": v.get("hidden_size", 3584),
            "intermediate_size": int(embed * mlp_ratio),  # the reference's int(embed_dim * mlp_ratio)
            "hidden_act": v.get("hidden_act", "quick_gelu"), "model_type": "qwen2_vl",
            "fullatt_block_indexes": ()}


def _build(klass, d: dict, prefix: str):
    names = {f.name for f in dataclasses.fields(klass)}
    kwargs = {k: v for k, v in d.items() if k in names and v is not None}
    for k, v in kwargs.items():
        if isinstance(v, list):
            kwargs[k] = tuple(v)
    try:
        return klass(**kwargs)
    except (ValueError, TypeError) as e:
        raise CheckpointError(prefix + str(e)) from None


# ------------------------------------------------------------------------------------------ presets
# The released Qwen2.5-VL-*-Instruct values (config.json of each checkpoint).

def _preset(vision_inter: int, out: int, **text) -> QwenVLConfig:
    return QwenVLConfig(
        vision=VisionConfig(depth=32, hidden_size=1280, intermediate_size=vision_inter, num_heads=16,
                            out_hidden_size=out, tokens_per_second=2),
        text=TextConfig(hidden_size=out, max_position_embeddings=128000, rms_norm_eps=1e-6, **text),
        eos_token_id=151645,
    )


PRESETS: dict[str, QwenVLConfig] = {
    "3b": _preset(3420, 2048, vocab_size=151936, intermediate_size=11008, num_hidden_layers=36,
                  num_attention_heads=16, num_key_value_heads=2, tie_word_embeddings=True),
    "7b": _preset(3420, 3584, vocab_size=152064, intermediate_size=18944, num_hidden_layers=28,
                  num_attention_heads=28, num_key_value_heads=4),
    "32b": _preset(3456, 5120, vocab_size=152064, intermediate_size=27648, num_hidden_layers=64,
                   num_attention_heads=40, num_key_value_heads=8),
    "72b": _preset(3456, 8192, vocab_size=152064, intermediate_size=29568, num_hidden_layers=80,
                   num_attention_heads=64, num_key_value_heads=8),
}
