"""Model configuration: frozen dataclasses with the Hugging Face field names.

`QwenVLConfig.from_hf_dict` reads a checkpoint's config.json in either layout:
- transformers 4.x: text fields at the top level, `rope_scaling.mrope_section`;
- transformers 5.x: text fields under `text_config`, rope under `rope_parameters`.
Every value the network depends on comes from the checkpoint; the defaults below are those of the
transformers 4.51.3 config classes (note `tokens_per_second=4` there, while the releases set 2).

Qwen2-VL checkpoints (`model_type` "qwen2_vl") load into the same classes: their vision_config names the
tower width `embed_dim`, the merger's output `hidden_size` and the MLP width `mlp_ratio` (a multiple of
embed_dim); `VisionConfig.model_type` then selects the Qwen2-VL tower (model/vision_qwen2.py) and
frame-index temporal positions (model/rope.py).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path


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
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
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

    @property
    def model_type(self) -> str:
        return self.vision.model_type

    # ---------------------------------------------------------------- reading and writing

    @classmethod
    def from_hf_dict(cls, d: dict) -> "QwenVLConfig":
        model_type = d.get("model_type")
        if model_type not in (None, "qwen2_5_vl", "qwen2_vl"):
            raise ValueError(f"model_type is {model_type!r}, expected 'qwen2_5_vl' or 'qwen2_vl' "
                             "(a Qwen2.5-VL or Qwen2-VL checkpoint)")
        v = dict(d.get("vision_config") or {})
        if "in_chans" in v and "in_channels" not in v:
            v["in_channels"] = v["in_chans"]
        v = _qwen2_vl_vision(v) if model_type == "qwen2_vl" else {**v, "model_type": "qwen2_5_vl"}
        vision = _build(VisionConfig, v)

        # 5.x nests the text fields; 4.x keeps them at the top level.
        t = dict(d.get("text_config") or {})
        for k, val in d.items():
            if k not in t and k not in ("text_config", "vision_config"):
                t[k] = val
        rope = t.get("rope_parameters") or t.get("rope_scaling") or d.get("rope_scaling") or {}
        if "mrope_section" in rope:
            t["mrope_section"] = tuple(rope["mrope_section"])
        if "rope_theta" in rope and "rope_theta" not in t:
            t["rope_theta"] = rope["rope_theta"]
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", "mrope"):
            raise ValueError(f"rope type {rope_type!r} is not supported (only default MRoPE)")
        if "tie_word_embeddings" not in t:
            t["tie_word_embeddings"] = d.get("tie_word_embeddings", False)
        text = _build(TextConfig, t)

        ids = {k: t[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id", "vision_start_token_id",
                                 "vision_end_token_id", "vision_token_id", "image_token_id", "video_token_id")
               if k in t}
        if isinstance(ids.get("eos_token_id"), list):
            ids["eos_token_id"] = tuple(ids["eos_token_id"])
        return cls(vision=vision, text=text, **ids)

    @classmethod
    def from_file(cls, path: str | Path) -> "QwenVLConfig":
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.exists():
            raise FileNotFoundError(f"{path.parent} is not a Qwen2.5-VL checkpoint: no config.json in it")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
        return cls.from_hf_dict(d)

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


def _build(klass, d: dict):
    names = {f.name for f in dataclasses.fields(klass)}
    kwargs = {k: v for k, v in d.items() if k in names and v is not None}
    for k, v in kwargs.items():
        if isinstance(v, list):
            kwargs[k] = tuple(v)
    return klass(**kwargs)


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
