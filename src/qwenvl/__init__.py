"""qwenvl: a from-scratch PyTorch implementation of the Qwen2.5-VL system."""

from pathlib import Path as _Path

from .config import PRESETS, QwenVLConfig
from .engine.sampling import SamplingParams
from .pipeline import ChatResult, Pipeline, load

# The small model trained by scripts/build_default_model.py and shipped in the package (synthetic shapes:
# counting, colours, grounding), so that every command runs offline. None when not installed.
_default = _Path(__file__).parent / "assets" / "default"
DEFAULT_MODEL: str | None = str(_default) if (_default / "config.json").exists() else None

__all__ = ["DEFAULT_MODEL", "load", "Pipeline", "ChatResult", "SamplingParams", "QwenVLConfig", "PRESETS"]
__version__ = "0.1.0"
